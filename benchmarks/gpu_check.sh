#!/usr/bin/env bash
# The GPU check: CUDA tests, training tokens/s + MFU (transformer_base, transformer_big, bf16),
# beam-5 generation sentences/s on the de-en sample, S2T training frames/s; one summary block.
#
#   bash benchmarks/gpu_check.sh                       # one H100/H200: about 5 minutes (< 8)
#   bash benchmarks/gpu_check.sh --device cpu --smoke  # tiny, on CPU (tests/integration/test_gpu_check.py)
#
# Run from the repository root with nmtkit's requirements importable (on a machine without
# network, bring them as wheels: docs/benchmarks.md#gpu-check). nmtkit itself need not be
# installed: without an install the script puts the repository on PYTHONPATH.
#
# Options:
#   --device cuda|cpu     where everything runs (default cuda)
#   --smoke               tiny presets, 2-3 updates, a handful of sentences (< 60 s on CPU)
#   --peak-tflops N       peak FLOP/s for MFU, in TFLOP/s (default 800: H200 bf16)
#   --precision P         common.precision of the runs (default bf16)
#   --work-dir DIR        scratch folder (default /tmp/nmtkit-gpu-check; its parts are replaced)
#   --json FILE           every figure as JSON
#   --skip-tests          leave out the CUDA tests
# Environment: PYTHON (default python3). Exit code 0 when every part passed, else 1
# (2 for a usage or set-up error).
set -uo pipefail

DEVICE=cuda
SMOKE=0
PEAK_TFLOPS=800
PRECISION=bf16
WORK_DIR=/tmp/nmtkit-gpu-check
JSON=
SKIP_TESTS=0
PYTHON=${PYTHON:-python3}

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --peak-tflops) PEAK_TFLOPS=${2:?--peak-tflops needs a value}; shift 2 ;;
        --precision) PRECISION=${2:?--precision needs a value}; shift 2 ;;
        --work-dir) WORK_DIR=${2:?--work-dir needs a value}; shift 2 ;;
        --json) JSON=${2:?--json needs a value}; shift 2 ;;
        --skip-tests) SKIP_TESTS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
STARTED=$(date +%s)
mkdir -p "$WORK_DIR" || { echo "gpu_check.sh: cannot create --work-dir $WORK_DIR" >&2; exit 2; }
# Only what this script writes is removed (never the folder itself: it may be a user's).
rm -rf "$WORK_DIR/pythonpath" "$WORK_DIR/summary.txt" "$WORK_DIR/cuda_tests.log"

# What nmtkit needs at run time; a missing one is named, with where to get it.
if ! missing=$("$PYTHON" - <<'EOF'
import importlib.util
needed = ["torch", "torchaudio", "numpy", "sentencepiece", "sacrebleu", "hydra", "omegaconf",
          "soundfile", "jiwer", "tqdm", "tensorboard", "pytest"]
absent = [name for name in needed if importlib.util.find_spec(name) is None]
print(" ".join(absent))
raise SystemExit(1 if absent else 0)
EOF
); then
    echo "gpu_check.sh: $PYTHON lacks: ${missing:-python itself}; install them (offline: the wheels in docs/benchmarks.md#gpu-check)" >&2
    exit 2
fi
# Without `pip install -e .` the package nmtkit_cli (the folder cli/) is not importable:
# point a folder on PYTHONPATH at it.
if ! "$PYTHON" -c "import nmtkit_cli" 2>/dev/null; then
    mkdir -p "$WORK_DIR/pythonpath"
    ln -s "$REPO/cli" "$WORK_DIR/pythonpath/nmtkit_cli"
    export PYTHONPATH="$REPO:$WORK_DIR/pythonpath${PYTHONPATH:+:$PYTHONPATH}"
fi

# (a) The CUDA tests. With --smoke only the CUDA test file (its tests skip without a GPU).
if [ "$SKIP_TESTS" = 1 ]; then
    TESTS_LINE="skipped (--skip-tests)"
    TESTS_RC=0
else
    if [ "$SMOKE" = 1 ]; then TEST_PATHS=(tests/integration/test_cuda.py); else TEST_PATHS=(tests/); fi
    echo "[gpu_check] $PYTHON -m pytest -q -m cuda ${TEST_PATHS[*]}"
    "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider --basetemp "$WORK_DIR/pytest" "${TEST_PATHS[@]}" 2>&1 | tee "$WORK_DIR/cuda_tests.log"
    TESTS_RC=${PIPESTATUS[0]}
    # pytest's closing line, e.g. "3 passed in 41.20s" or "3 skipped in 1.02s".
    TESTS_LINE=$(grep -E '^[=[:space:]]*[0-9]+ (passed|failed|skipped|error|deselected)' "$WORK_DIR/cuda_tests.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
    TESTS_LINE="${TESTS_LINE:-no summary line} (exit $TESTS_RC; pytest -m cuda ${TEST_PATHS[*]})"
    if [ "$DEVICE" != cpu ] && [ "$TESTS_RC" = 0 ] && ! grep -qE '[0-9]+ passed' "$WORK_DIR/cuda_tests.log"; then
        TESTS_LINE="NOT RUN: every CUDA test skipped, torch sees no GPU ($TESTS_LINE)"
        TESTS_RC=1
    fi
fi

# (b)-(d) Throughput: training tokens/s and MFU, generation sentences/s, S2T frames/s.
THROUGHPUT_ARGS=(--device "$DEVICE" --precision "$PRECISION" --peak-tflops "$PEAK_TFLOPS"
                 --work-dir "$WORK_DIR/throughput" --summary "$WORK_DIR/summary.txt")
[ "$SMOKE" = 1 ] && THROUGHPUT_ARGS+=(--smoke)
[ -n "$JSON" ] && THROUGHPUT_ARGS+=(--json "$JSON")
echo "[gpu_check] $PYTHON benchmarks/gpu_throughput.py ${THROUGHPUT_ARGS[*]}"
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu_throughput.py "${THROUGHPUT_ARGS[@]}"
THROUGHPUT_RC=$?
if [ ! -s "$WORK_DIR/summary.txt" ]; then
    printf '%s\n' "train base  : MISSING (gpu_throughput.py exited $THROUGHPUT_RC; see above)" \
        "train big   : MISSING" "generate    : MISSING" "s2t train   : MISSING" >"$WORK_DIR/summary.txt"
fi

RC=0
[ "$TESTS_RC" = 0 ] && [ "$THROUGHPUT_RC" = 0 ] || RC=1
echo
echo "==================== nmtkit GPU check ===================="
echo "cuda tests  : $TESTS_LINE"
cat "$WORK_DIR/summary.txt"
echo "wall        : $(( $(date +%s) - STARTED )) s, exit $RC (work dir $WORK_DIR)"
echo "=========================================================="
exit $RC
