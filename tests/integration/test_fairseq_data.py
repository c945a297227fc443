"""A data directory made by fairseq-preprocess trains in nmtkit unchanged (needs fairseq)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from test_train_generate import train_args, train_log

from nmtkit_cli.train import cli_main as train_cli

FAIRSEQ_PYTHON = Path(os.environ.get("FAIRSEQ_PYTHON", "/work/fairseq-venv/bin/python"))


@pytest.mark.fairseq
@pytest.mark.skipif(not FAIRSEQ_PYTHON.exists(), reason="needs fairseq (set FAIRSEQ_PYTHON)")
def test_nmtkit_trains_on_a_fairseq_data_bin(raw_dir: Path, tmp_path: Path) -> None:
    destination = tmp_path / "fairseq-bin"
    subprocess.run(
        [str(FAIRSEQ_PYTHON), "-m", "fairseq_cli.preprocess", "--source-lang", "src",
         "--target-lang", "tgt", "--trainpref", str(raw_dir / "train"),
         "--validpref", str(raw_dir / "valid"), "--destdir", str(destination),
         "--joined-dictionary", "--dataset-impl", "mmap", "--workers", "1"],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    save_dir = tmp_path / "run"
    train_cli(train_args(destination, save_dir, "optimization.max_update=5"))
    records = train_log(save_dir)
    assert [r["update"] for r in records] == [1, 2, 3, 4, 5]
    assert train_log(save_dir, "valid")[0]["nsentences"] == 24
