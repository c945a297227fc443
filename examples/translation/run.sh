#!/usr/bin/env bash
# The bundled example, end to end: preprocess -> train -> generate -> score.
#   bash examples/translation/run.sh            (outputs in examples/translation/work/)
# Extra arguments are passed to nmtkit-train, e.g. optimization.max_update=300.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$HERE/work}
mkdir -p "$WORK"

nmtkit-preprocess source_lang=de target_lang=en \
    trainpref="$HERE/data/train" validpref="$HERE/data/valid" testpref="$HERE/data/test" \
    destdir="$WORK/data-bin" bpe=sentencepiece bpe_vocab_size=2000 joined_dictionary=true \
    workers=2 overwrite=true

nmtkit-train --config-dir "$HERE" --config-name de_en_small \
    task.data="$WORK/data-bin" checkpoint.save_dir="$WORK/checkpoints" "$@"

nmtkit-generate checkpoint="$WORK/checkpoints/checkpoint_best.pt" \
    input="$HERE/data/test.de" output="$WORK/test.hyp.en" beam=5 batch_size=64

echo "--- 5 test translations (source | hypothesis | reference)"
paste -d '|' <(head -5 "$HERE/data/test.de") <(head -5 "$WORK/test.hyp.en") <(head -5 "$HERE/data/test.en")
nmtkit-score hyp="$WORK/test.hyp.en" ref="$HERE/data/test.en" 'metrics=[bleu,chrf,ter]'
