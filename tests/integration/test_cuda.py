"""CUDA paths (skipped without a GPU): mixed precision training and generation on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_generate import train_args, train_log

from nmtkit_cli.generate import cli_main as generate_cli
from nmtkit_cli.train import cli_main as train_cli

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_train_and_generate_on_cuda(
    precision: str, data_dir: Path, raw_dir: Path, tmp_path: Path
) -> None:
    save_dir = tmp_path / "run"
    train_cli(
        train_args(data_dir, save_dir, "common.device=cuda", f"common.precision={precision}",
                   "optimization.max_update=20", "generation.eval_bleu=true")
    )  # fmt: skip
    records = train_log(save_dir)
    assert len(records) == 20 and records[-1]["loss"] < records[0]["loss"]
    if precision == "fp16":
        assert records[-1]["loss_scale"] > 0
    output = tmp_path / "hyp.txt"
    generate_cli([f"checkpoint={save_dir / 'checkpoint_last.pt'}", f"input={raw_dir / 'test.src'}",
                  f"output={output}", "device=cuda", f"precision={precision}"])  # fmt: skip
    assert len(output.read_text().splitlines()) == len(
        (raw_dir / "test.src").read_text().splitlines()
    )
