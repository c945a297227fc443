#!/usr/bin/env bash
# Speech recognition and speech translation end to end on CPU:
# preprocess -> train -> generate (from the raw audio manifest) -> score.
#   bash examples/speech_to_text/run.sh ../shared/data/speech        (outputs in examples/speech_to_text/work/)
#   TASKS=asr bash examples/speech_to_text/run.sh SPEECH_DIR          (only ASR; TASKS=st only ST)
#   TASKS=asr_conformer bash examples/speech_to_text/run.sh SPEECH_DIR (ASR with a Conformer encoder)
# SPEECH_DIR holds train.tsv, valid.tsv, test.tsv (header: id audio n_samples speaker src_text
# tgt_text) and the audio they name. Extra arguments are passed to nmtkit-train.
# ST starts its encoder from the ASR model when the same command trained one first (TASKS="asr
# st", the default), or from ST_ENCODER_FROM=CHECKPOINT; ST_ENCODER_FROM=none starts from scratch.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash $0 SPEECH_DIR [nmtkit-train settings ...]" >&2
  exit 2
fi
SPEECH=$1
shift
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$HERE/work}
TASKS=${TASKS:-"asr st"}
mkdir -p "$WORK"
encoder_from=${ST_ENCODER_FROM:-}

for task in $TASKS; do
  case $task in
    asr|asr_conformer)
      data=asr; target=src_text; extra=(bpe_vocab_size=256); metrics='metrics=[wer,cer]'; column=5 ;;
    st)
      data=st; target=tgt_text; extra=(bpe_vocab_size=1000 ctc_source=src_text); metrics='metrics=[bleu,chrf]'; column=6 ;;
    *) echo "unknown task '$task' in TASKS: use asr, asr_conformer or st" >&2; exit 2 ;;
  esac
  init=()
  if [ "$task" = st ] && [ -n "$encoder_from" ] && [ "$encoder_from" != none ]; then
    init=(checkpoint.init_encoder_from="$encoder_from")
  fi
  nmtkit-preprocess task=speech_to_text train="$SPEECH/train.tsv" valid="$SPEECH/valid.tsv" \
      test="$SPEECH/test.tsv" target=$target "${extra[@]}" destdir="$WORK/$data-data" \
      workers=2 overwrite=true
  nmtkit-train --config-dir "$HERE" --config-name $task \
      task.data="$WORK/$data-data" checkpoint.save_dir="$WORK/$task-checkpoints" "${init[@]}" "$@"
  if [ "$task" = asr ] && [ -z "${ST_ENCODER_FROM:-}" ]; then
    encoder_from="$WORK/asr-checkpoints/checkpoint_best.pt"
  fi
  nmtkit-generate checkpoint="$WORK/$task-checkpoints/checkpoint_best.pt" \
      input="$SPEECH/test.tsv" output="$WORK/$task.test.hyp" beam=5 max_len_b=100
  tail -n +2 "$SPEECH/test.tsv" | cut -f$column > "$WORK/$task.test.ref"
  echo "--- $task: 5 test hypotheses (hypothesis | reference)"
  paste -d '|' <(head -5 "$WORK/$task.test.hyp") <(head -5 "$WORK/$task.test.ref")
  nmtkit-score hyp="$WORK/$task.test.hyp" ref="$WORK/$task.test.ref" "$metrics"
done
