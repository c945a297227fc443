"""benchmarks/gpu_check.sh in its CPU smoke mode, and the FLOP count behind its MFU figures."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from torch import nn

from nmtkit.models import MODELS
from nmtkit.models.transformer import transformer_tiny

REPO = Path(__file__).resolve().parents[2]
SUMMARY_LABELS = (
    "cuda tests",
    "device",
    "train base",
    "train big",
    "generate",
    "s2t train",
    "wall",
)


def load_gpu_throughput() -> ModuleType:
    """benchmarks/ is a folder of scripts, not a package: load the script by its path."""
    path = REPO / "benchmarks" / "gpu_throughput.py"
    spec = importlib.util.spec_from_file_location("gpu_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_run_prints_every_summary_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
    }
    json_path = tmp_path / "figures.json"
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--smoke",
         "--work-dir", str(tmp_path / "work"), "--json", str(json_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    block = result.stdout.split("==== nmtkit GPU check ====", 1)[1].splitlines()
    labels = [line.split(":", 1)[0].strip() for line in block if ":" in line]
    assert labels == list(SUMMARY_LABELS), block
    assert not any("FAILED" in line or "MISSING" in line for line in block), block
    assert "skipped" in block[1]  # the CUDA tests ran and skipped: no GPU here
    for line in block[3:7]:
        assert any(unit in line for unit in ("tok/s", "sentences/s", "frames/s")), line


def test_flop_count_matches_the_models_weight_matrices() -> None:
    """6 x (weights multiplied per target token) must be the model's nn.Linear weights: with
    equal source and target lengths every weight is used once per target token."""
    gpu_throughput = load_gpu_throughput()
    config = dataclasses.replace(
        transformer_tiny(), encoder_layers=2, decoder_ffn_embed_dim=24, decoder_layers=3
    )
    vocab = 40
    model = MODELS.build(config, src_vocab_size=vocab, tgt_vocab_size=vocab, padding_idx=1)
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    flops = gpu_throughput.transformer_training_flops(config, vocab, 7, 7)
    assert flops.matmul_weights == linear_weights
    # Attention: 12 x (L_e S d + L_d (T + S) d) with d = 16, S = T = 7.
    assert flops.attention == 12 * (2 * 7 * 16 + 3 * 14 * 16)
    assert flops.per_target_token == 6 * linear_weights + flops.attention


@pytest.mark.parametrize(
    ("preset", "mflops"), [("transformer_base", 368.4), ("transformer_big", 1265.4)]
)
def test_flops_of_the_measured_presets(preset: str, mflops: float) -> None:
    """The figures quoted in the script's docstring and docs/benchmarks.md."""
    gpu_throughput = load_gpu_throughput()
    config = gpu_throughput.TRANSFORMER_PRESETS[preset]()
    flops = gpu_throughput.transformer_training_flops(config, 32768, 32, 32)
    assert flops.per_target_token / 1e6 == pytest.approx(mflops, abs=0.05)
