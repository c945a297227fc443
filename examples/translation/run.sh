#!/usr/bin/env bash
# The bundled example, end to end: preprocess -> train -> generate -> score.
#   bash examples/translation/run.sh            (outputs in examples/translation/work/)
# Extra arguments are passed to nmtkit-train, e.g. optimization.max_update=3000.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$HERE/work}
mkdir -p "$WORK"
# As many PyTorch threads as there are idle cores (at least one) unless OMP_NUM_THREADS is
# set: on 2 cores shared with another job, two spinning OpenMP threads made training 6x and
# decoding 15x slower than one thread, while on 2 idle cores two threads train 1.6x faster.
if [ -z "${OMP_NUM_THREADS:-}" ] && [ -r /proc/loadavg ]; then
    OMP_NUM_THREADS=$(awk -v n="$(nproc)" '{i = int(n - $1 + 0.5); print (i < 1) ? 1 : i}' /proc/loadavg)
    export OMP_NUM_THREADS
fi
echo "--- PyTorch threads: ${OMP_NUM_THREADS:-default}"

stage() { echo "--- $1 ($(date +%T))"; }
stage preprocess
nmtkit-preprocess source_lang=de target_lang=en \
    trainpref="$HERE/data/train" validpref="$HERE/data/valid" testpref="$HERE/data/test" \
    destdir="$WORK/data-bin" bpe=sentencepiece bpe_vocab_size=4000 joined_dictionary=true \
    workers=2 overwrite=true

stage train
nmtkit-train --config-dir "$HERE" --config-name de_en_small \
    task.data="$WORK/data-bin" checkpoint.save_dir="$WORK/checkpoints" "$@"

# The length limit stops a young model's runaway outputs; no_repeat_ngram_size=2 keeps it
# from looping on one piece ("steeeee", "body body body"): it removes those loops and costs
# about 0.3 BLEU here (see README.md), so the score comes from training, not from the search.
stage generate
nmtkit-generate checkpoint="$WORK/checkpoints/checkpoint_best.pt" \
    input="$HERE/data/test.de" output="$WORK/test.hyp.en" beam=5 batch_size=64 \
    max_len_a=1.5 max_len_b=5 no_repeat_ngram_size=2

stage score
echo "5 test translations (source | hypothesis | reference):"
paste -d '|' <(head -5 "$HERE/data/test.de") <(head -5 "$WORK/test.hyp.en") <(head -5 "$HERE/data/test.en")
nmtkit-score hyp="$WORK/test.hyp.en" ref="$HERE/data/test.en" 'metrics=[bleu,chrf,ter]'
stage done
