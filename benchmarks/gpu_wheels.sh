#!/usr/bin/env bash
# Downloads the wheels nmtkit needs on an offline GPU machine whose image already has PyTorch
# (Python 3.12, Linux x86-64, with torch, torchaudio, numpy, sentencepiece, sacrebleu, tqdm,
# tensorboard, PyYAML, packaging, click, typing-extensions and pytest): hydra-core, omegaconf,
# antlr4-python3-runtime, soundfile (+ cffi, pycparser) and jiwer (+ rapidfuzz).
#
#   bash benchmarks/gpu_wheels.sh [DIR]        # default DIR: wheels/ (ignored by git)
#
# Then, on the GPU machine, from the repository root (docs/benchmarks.md#gpu-check):
#   python3 -m pip install --no-index --no-deps DIR/*.whl
#   bash benchmarks/gpu_check.sh
# Versions are those the test suite runs with; PYTHON (default python3) runs pip here,
# PY_VERSION (default 3.12) is the GPU machine's Python.
set -euo pipefail

DEST=${1:-wheels}
PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
ABI=cp${PY_VERSION/./}
mkdir -p "$DEST"

# --no-deps: the list is the complete set of what is missing there (each one's needs are
# named here or already installed), and nothing already installed gets a second version.
# Several --platform tags: soundfile and rapidfuzz ship manylinux_2_28 wheels only, cffi
# manylinux2014 ones; pip matches each tag exactly.
"$PYTHON" -m pip download --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp --abi "$ABI" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" \
    hydra-core==1.3.8 omegaconf==2.3.1 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 \
    jiwer==4.0.0 rapidfuzz==3.14.6

# omegaconf 2.3 and hydra-core 1.3 pin antlr4-python3-runtime 4.9.*, which PyPI has as a
# source archive only: build its (pure Python) wheel here.
"$PYTHON" -m pip wheel --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3

ls -l "$DEST"
