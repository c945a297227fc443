"""Training-loop behaviour: precisions, non-finite losses, fp16 scale collapse, DDP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_generate import run_cli, train_args, train_log

from nmtkit.tasks.translation import TranslationTask
from nmtkit_cli.train import cli_main as train_cli


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision: str, data_dir: Path, tmp_path: Path) -> None:
    train_cli(
        train_args(data_dir, tmp_path, f"common.precision={precision}", "optimization.max_update=4",
                   "dataset.disable_validation=true")
    )  # fmt: skip
    records = train_log(tmp_path)
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert ("loss_scale" in records[-1]) == (precision == "fp16")


def poison_third_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    original = TranslationTask.train_step
    calls = {"n": 0}

    def train_step(self, model, criterion, sample):  # noqa: ANN001, ANN202
        loss, sample_size, logging_output = original(self, model, criterion, sample)
        calls["n"] += 1
        if calls["n"] == 3:
            loss = loss * float("nan")
        return loss, sample_size, logging_output

    monkeypatch.setattr(TranslationTask, "train_step", train_step)


def test_nan_loss_halts_with_a_clear_message(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    poison_third_batch(monkeypatch)
    code, _, err = run_cli(
        train_cli,
        train_args(
            data_dir, tmp_path, "optimization.max_update=6", "dataset.disable_validation=true"
        ),
        capsys,
    )
    assert code == 1
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(
        "nmtkit-train: error: loss or gradient is NaN/inf at update 3 (epoch 1)"
    )
    assert "on_nonfinite_loss=skip" in last_line and "Traceback" not in err


def test_nan_loss_can_be_skipped(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_third_batch(monkeypatch)
    train_cli(
        train_args(data_dir, tmp_path, "optimization.max_update=6", "dataset.disable_validation=true",
                   "common.on_nonfinite_loss=skip")
    )  # fmt: skip
    records = train_log(tmp_path)
    assert [r["update"] for r in records] == [1, 2, 3, 4, 5, 6]  # the poisoned batch made no update
    assert all(r["loss"] == r["loss"] for r in records)  # no NaN reached the logs


def test_fp16_scale_collapse_is_explained(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    poison_third_batch(monkeypatch)
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, tmp_path, "optimization.max_update=6", "dataset.disable_validation=true",
                   "common.precision=fp16", "common.fp16_init_scale=1", "common.min_loss_scale=0.9"),
        capsys,
    )  # fmt: skip
    assert code == 1 and "fp16 loss scale fell to 0.5" in err and "common.precision=bf16" in err


def test_update_freq_matches_a_bigger_batch(data_dir: Path, tmp_path: Path) -> None:
    """Gradients are normalised by the tokens of the whole update: accumulating two half
    batches gives the same first update as one batch of both (same samples, no dropout)."""
    common = ("optimization.max_update=1", "dataset.disable_validation=true", "model.dropout=0", "optimizer=sgd",
              "optimizer.lr=0.5", "lr_scheduler=fixed", "dataset.required_batch_size_multiple=1")  # fmt: skip
    train_cli(
        train_args(
            data_dir, tmp_path / "one", "dataset.batch_size=8", "dataset.max_tokens=100000", *common
        )
    )
    train_cli(train_args(data_dir, tmp_path / "two", "dataset.batch_size=4", "dataset.max_tokens=100000",
                         "optimization.update_freq=2", *common))  # fmt: skip
    one, two = train_log(tmp_path / "one")[0], train_log(tmp_path / "two")[0]
    assert one["bsz"] == two["bsz"] == 8
    # The two runs see the same 8 sentences only if batching lines up; compare tokens first.
    if one["wpb"] == two["wpb"]:
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
        assert one["gnorm"] == pytest.approx(two["gnorm"], rel=1e-4)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_cpu_processes(data_dir: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "nmtkit_cli.train",
         *train_args(data_dir, save_dir, "optimization.max_update=4", "common.device=cpu")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = train_log(save_dir)
    assert [r["update"] for r in records] == [1, 2, 3, 4]  # one log, written by rank 0 only
    assert (save_dir / "checkpoint_last.pt").is_file()
    validations = [json.loads(line) for line in (save_dir / "train_log.jsonl").read_text().splitlines()
                   if json.loads(line)["kind"] == "valid"]  # fmt: skip
    assert validations and validations[0]["nsentences"] == 24  # every validation sentence, once


def test_round_robin_over_data_directories(data_dir: Path, raw_dir: Path, tmp_path: Path) -> None:
    """task.data=a:b trains epoch 1 on a, epoch 2 on b (same dictionaries)."""
    from nmtkit_cli.preprocess import cli_main as preprocess_cli

    small = tmp_path / "small-bin"
    preprocess_cli([
        "source_lang=src", "target_lang=tgt", f"trainpref={raw_dir / 'valid'}",
        f"validpref={raw_dir / 'valid'}", f"destdir={small}", f"bpe_model={data_dir / 'spm.model'}",
        f"srcdict={data_dir / 'dict.src.txt'}", f"tgtdict={data_dir / 'dict.tgt.txt'}",
    ])  # fmt: skip
    save_dir = tmp_path / "run"
    train_cli(
        train_args(f"{data_dir}:{small}", save_dir, "optimization.max_epoch=2",  # type: ignore[arg-type]
                   "dataset.disable_validation=true", "dataset.max_tokens=2000")
    )  # fmt: skip
    per_epoch: dict[int, int] = {}
    for record in train_log(save_dir):
        per_epoch[record["epoch"]] = per_epoch.get(record["epoch"], 0) + int(record["bsz"])
    assert per_epoch == {1: 400, 2: 24}


def test_keep_last_n_finetune_and_tensorboard(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_cli(
        train_args(data_dir, run, "optimization.max_update=8", "checkpoint.save_interval_updates=2",
                   "checkpoint.keep_last_n=2", "dataset.disable_validation=true",
                   f"common.tensorboard_logdir={tmp_path / 'tb'}")
    )  # fmt: skip
    assert sorted(p.name for p in run.glob("checkpoint_*_*.pt")) == [
        "checkpoint_1_6.pt",
        "checkpoint_1_8.pt",
    ]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    finetuned = tmp_path / "finetuned"
    train_cli(
        train_args(data_dir, finetuned, "optimization.max_update=2", "dataset.disable_validation=true",
                   f"checkpoint.finetune_from_model={run / 'checkpoint_last.pt'}")
    )  # fmt: skip
    records = train_log(finetuned)
    assert [r["update"] for r in records] == [1, 2]  # counters start afresh
    assert records[0]["loss"] < train_log(run)[0]["loss"]  # but the weights do not


def test_patience_stops_training(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With lr=0 the validation loss never improves after the first validation."""
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, tmp_path, "optimizer=sgd", "optimizer.lr=1e-12", "lr_scheduler=fixed",
                   "optimization.max_update=50", "dataset.validate_interval_updates=2",
                   "checkpoint.patience=2"),
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "no improvement of loss in 2 validations" in err
    assert max(r["update"] for r in train_log(tmp_path)) < 50


def test_progress_bar_mode_keeps_a_summary_line_per_epoch(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal the bar of each epoch vanishes; its last training statistics stay."""
    train_cli(train_args(data_dir, tmp_path / "run", "common.log_format=tqdm",
                         "optimization.max_epoch=2", "dataset.disable_validation=true",
                         "dataset.max_tokens=2000", "common.log_interval=2"))  # fmt: skip
    err = capsys.readouterr().err
    # (splitlines also splits the bar's carriage-return redraws, which start with its desc.)
    summaries = [line for line in err.splitlines() if re.match(r"epoch \d{3} \| update ", line)]
    assert [line[:9] for line in summaries] == ["epoch 001", "epoch 002"]
    assert all("| loss " in line for line in summaries)


def test_common_plot_draws_the_run(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    save_dir = tmp_path / "run"
    train_cli(train_args(data_dir, save_dir, "optimization.max_update=4", "common.plot=true",
                         "dataset.validate_interval_updates=2"))  # fmt: skip
    assert (save_dir / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
