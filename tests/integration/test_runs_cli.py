"""`nmtkit-runs` on run directories written by hand (no training): statuses, best metrics,
the settings that differ, the formats, the plot, and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nmtkit.errors import DataError
from nmtkit.runs import (
    build_figure,
    differing_keys,
    format_table,
    plot_runs,
    read_run,
    read_runs,
    table_rows,
)
from nmtkit_cli.runs import RunsConfig, cli_main, main


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_run(
    folder: Path,
    *,
    lr: float = 5e-4,
    dropout: float = 0.1,
    updates: int = 4,
    valid: list[dict[str, float]] | None = None,
    status: dict[str, Any] | None = None,
    lock_pid: int | None = None,
    experiment_id: str | None = None,
) -> Path:
    """A run directory as nmtkit-train leaves it, with a training record every update."""
    folder.mkdir(parents=True)
    config = {
        "common": {"seed": 1, "tensorboard_logdir": str(folder / "tb")},
        "checkpoint": {"save_dir": str(folder), "patience": 0},
        "optimizer": {"_name": "adam", "lr": lr, "betas": [0.9, 0.98]},
        "model": {"dropout": dropout, "encoder_layers": 2},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    env = {"host": socket.gethostname(), "started": 1.0, "data": {}}
    if experiment_id is not None:
        env["experiment_id"] = experiment_id
    (folder / "env.json").write_text(json.dumps(env))
    records = []
    for update in range(1, updates + 1):
        loss = 10.0 - update
        records.append(
            {"kind": "train", "update": update, "epoch": 1, "loss": loss, "lr": lr * update}
        )
        records[-1]["wall"] = 1.5 * update
    for number, metrics in enumerate(valid or [], start=1):
        records.append({"kind": "valid", "update": 2 * number, "epoch": 1, **metrics})
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if status is not None:
        (folder / "run_status.json").write_text(json.dumps(status))
    if lock_pid is not None:
        lock = {"pid": lock_pid, "host": socket.gethostname(), "started": 1.0}
        (folder / "train.lock").write_text(json.dumps(lock))
    return folder


@pytest.fixture
def three_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """runs/a finished, runs/b running (our own pid holds its lock), runs/nested/c killed."""
    runs = tmp_path / "runs"
    finished = {"status": "finished", "reason": "reached max_update=4", "updates": 4, "epoch": 2}
    write_run(
        runs / "a",
        valid=[{"loss": 7.5, "bleu": 3.0}, {"loss": 6.0, "bleu": 12.5}, {"loss": 6.5, "bleu": 9}],
        status=finished,
        experiment_id="0123456789abcdef",
    )
    write_run(runs / "b", lr=1e-3, valid=[{"loss": 8.0, "bleu": 1.0}], lock_pid=os.getpid())
    write_run(runs / "nested" / "c", lr=1e-3, updates=2, lock_pid=dead_pid())
    # A folder inside a run directory is not searched (checkpoint folders, TensorBoard events).
    write_run(runs / "a" / "inner")
    monkeypatch.chdir(tmp_path)
    return runs


def test_table_lists_statuses_metrics_and_only_the_differing_settings(
    three_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = main(RunsConfig(dirs=[str(three_runs)]))
    table = capsys.readouterr().out
    by_run = {row["run"]: row for row in rows}
    assert list(by_run) == ["runs/a", "runs/b", "runs/nested/c"]

    assert by_run["runs/a"]["status"] == "finished"
    assert by_run["runs/a"]["reason"] == "reached max_update=4"
    assert by_run["runs/a"]["epoch"] == 2  # from run_status.json
    assert by_run["runs/b"]["status"] == "running"
    assert by_run["runs/nested/c"]["status"] == "stopped"
    assert "killed?" in by_run["runs/nested/c"]["reason"]

    assert by_run["runs/a"]["best_valid_loss"] == 6.0
    assert by_run["runs/a"]["best_bleu"] == 12.5
    assert by_run["runs/nested/c"]["best_valid_loss"] is None
    assert by_run["runs/nested/c"]["updates"] == 2
    assert by_run["runs/a"]["wall_seconds"] == 6.0
    assert by_run["runs/a"]["experiment_id"] == "0123456789abcdef"

    # Only optimizer.lr differs: save_dir and tensorboard_logdir always do and are left out.
    assert all(list(row["config"]) == ["optimizer.lr"] for row in rows)
    header = table.splitlines()[0]
    assert "optimizer.lr" in header and "dropout" not in header and "save_dir" not in header
    assert "| WER" not in header  # no run logged WER
    assert "01234567" in table and "0123456789abcdef" not in table
    assert "finished (reached max_update=4)" in table
    assert "stopped (killed?" in table


def test_csv_and_json_parse(three_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_main([str(three_runs), "format=csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["run"] for row in rows] == ["runs/a", "runs/b", "runs/nested/c"]
    assert [row["optimizer.lr"] for row in rows] == ["0.0005", "0.001", "0.001"]
    assert rows[0]["best_bleu"] == "12.5" and rows[2]["best_bleu"] == ""

    cli_main(["format=json", str(three_runs / "nested")])
    parsed = json.loads(capsys.readouterr().out)
    assert len(parsed) == 1 and parsed[0]["config"] == {}  # one run: nothing differs
    assert parsed[0]["updates"] == 2


def test_without_a_lock_or_status_the_run_was_killed(tmp_path: Path) -> None:
    run = read_run(write_run(tmp_path / "run", valid=[{"loss": 5.0, "wer": 40.0}]))
    assert (run.status, run.best) == ("stopped", {"valid_loss": 5.0, "wer": 40.0})
    assert "no run_status.json" in run.reason


def test_counts_come_from_the_checkpoint_when_the_log_has_none(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    folder = write_run(tmp_path / "run", updates=0)
    progress = {"num_updates": 7, "epoch": 3, "best_metric": None, "train_seconds": 12.0}
    torch.save({"training_state": {"progress": progress}}, folder / "checkpoint_last.pt")
    lock = {"pid": 1, "host": "another-host", "started": 1.0}
    (folder / "train.lock").write_text(json.dumps(lock))
    run = read_run(folder)
    assert (run.updates, run.epoch, run.wall_seconds) == (7, 3, 12.0)
    assert run.status == "running" and "another-host" in run.reason


def test_a_half_written_last_log_line_is_ignored(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run")
    with open(folder / "train_log.jsonl", "a") as log:
        log.write('{"kind": "train", "upd')
    assert read_run(folder).updates == 4
    (folder / "train_log.jsonl").write_text('{"kind": "tr\n{"kind": "train", "update": 1}\n')
    with pytest.raises(DataError, match=r"train_log.jsonl:1: not a JSON record"):
        read_run(folder)


def test_differing_keys_include_keys_missing_from_some_runs(tmp_path: Path) -> None:
    write_run(tmp_path / "a")
    folder = write_run(tmp_path / "b")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"]["layerdrop"] = 0.1
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    runs = read_runs([tmp_path])
    assert differing_keys(runs) == ["model.layerdrop"]
    rows = table_rows(runs, cwd=tmp_path)
    assert [row["config"] for row in rows] == [{}, {"model.layerdrop": 0.1}]
    lines = format_table(rows, "csv").splitlines()
    assert lines[1].endswith(",-") and lines[2].endswith(",0.1")


def run_failing(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("nmtkit-runs: error: ")
    return captured.err


def test_user_mistakes_are_one_line(
    three_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert "no run directories found" in run_failing([str(empty)], capsys)
    assert "no such folder" in run_failing([str(tmp_path / "missing")], capsys)
    assert "format=xml" in run_failing([str(three_runs), "format=xml"], capsys)
    assert "unknown option '--bogus'" in run_failing(["--bogus"], capsys)
    assert "colour=red" in run_failing(["colour=red"], capsys)
    assert "--plot needs a file name" in run_failing(["--plot"], capsys)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    error = run_failing([str(three_runs), "--plot", str(a_file / "out.png")], capsys)
    assert "plot=" in error and "is a file, not a directory" in error
    assert ".png" in run_failing([str(three_runs), "plot=out.bmp"], capsys)


def test_folder_named_like_a_setting_is_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path / "optimizer.lr=0.001")
    monkeypatch.chdir(tmp_path)
    cli_main(["optimizer.lr=0.001", "format=json"])
    assert json.loads(capsys.readouterr().out)[0]["run"] == "optimizer.lr=0.001"


def test_help_shows_an_example_and_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    cli_main(["--help"])
    shown = capsys.readouterr().out
    assert "nmtkit-runs runs/ --plot runs.png" in shown and "format=markdown" in shown


def test_plot_draws_every_run(three_runs: Path, tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    runs = read_runs([three_runs])
    figure = build_figure(runs)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert len(titles) == 3  # loss, learning rate, BLEU (nobody logged WER)
    loss_axis, lr_axis, bleu_axis = (axis for axis in figure.axes if axis.get_visible())
    assert len(loss_axis.get_lines()) == 2 * len(runs)  # training and validation per run
    assert len(lr_axis.get_lines()) == len(runs) and len(bleu_axis.get_lines()) == len(runs)
    labels = [text.get_text() for text in loss_axis.get_legend().get_texts()]
    # Runs with the same settings are told apart by their folder names.
    assert labels == ["optimizer.lr=0.0005", "b: optimizer.lr=0.001", "c: optimizer.lr=0.001"]

    output = plot_runs([run.path for run in runs], tmp_path / "plots" / "runs.png")
    pixels = image.imread(output)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0
    assert not list(output.parent.glob(".*.tmp"))


def test_plot_without_matplotlib_says_what_to_install(
    three_runs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    error = run_failing([str(three_runs), "--plot", "runs.png"], capsys)
    assert "install nmtkit[plot]" in error
    assert not Path("runs.png").exists()
