"""Old checkpoints keep loading: every committed fixture, one per released format_version,
must load with weights_only=True and translate exactly as it did when it was written."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from nmtkit import checkpoint as checkpoint_module
from nmtkit.checkpoint import load_checkpoint
from nmtkit_cli.generate import cli_main as generate_cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "checkpoints"
CHECKPOINTS = sorted(FIXTURES.glob("format*_tiny.pt"))
sys.path.insert(0, str(FIXTURES.parent))  # make_checkpoint_fixture


def test_there_is_a_fixture_for_the_current_format() -> None:
    names = {path.name for path in CHECKPOINTS}
    assert f"format{checkpoint_module.FORMAT_VERSION}_tiny.pt" in names


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.name)
def test_old_checkpoint_translates_as_recorded(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.load(path, weights_only=True)  # no pickled classes inside
    output = tmp_path / "hyp.txt"
    generate_cli(
        [f"checkpoint={path}", f"input={FIXTURES / 'input.txt'}", "beam=4", f"output={output}"]
    )
    expected = path.with_name(path.name.replace(".pt", ".expected.txt")).read_text()
    assert output.read_text() == expected


def test_upgrade_functions_run_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A future format bump registers UPGRADES[old]; loading an old file applies it."""
    original = load_checkpoint(CHECKPOINTS[-1])

    def upgrade(state: dict) -> dict:
        state = dict(state, format_version=state["format_version"] + 1)
        state["config"]["model"]["renamed_in_next_format"] = True
        return state

    current = checkpoint_module.FORMAT_VERSION
    monkeypatch.setattr(checkpoint_module, "FORMAT_VERSION", current + 1)
    monkeypatch.setitem(checkpoint_module.UPGRADES, current, upgrade)
    upgraded = load_checkpoint(CHECKPOINTS[-1])
    assert upgraded["format_version"] == current + 1
    assert upgraded["config"]["model"]["renamed_in_next_format"] is True
    assert upgraded["model"].keys() == original["model"].keys()


RESUME_CHECKPOINTS = sorted(FIXTURES.glob("format*_resume.pt"))


def test_there_is_a_resume_fixture_for_the_current_format() -> None:
    names = {path.name for path in RESUME_CHECKPOINTS}
    assert f"format{checkpoint_module.FORMAT_VERSION}_resume.pt" in names


@pytest.mark.parametrize("path", RESUME_CHECKPOINTS, ids=lambda p: p.name)
def test_training_resumes_from_an_old_checkpoint(
    path: Path, data_dir: Path, tmp_path: Path
) -> None:
    """A run started by an earlier nmtkit continues under this one: optimizer, scheduler,
    data position and counters all restore."""
    from make_checkpoint_fixture import RESUME_MODEL

    from nmtkit_cli.train import cli_main as train_cli

    saved = load_checkpoint(path)
    saved_updates = saved["training_state"]["progress"]["num_updates"]
    save_dir = tmp_path / "ckpt"
    save_dir.mkdir()
    shutil.copy(path, save_dir / "checkpoint_last.pt")
    train_cli([
        f"task.data={data_dir}", *RESUME_MODEL, "optimizer=adam", "optimizer.lr=0.005",
        "lr_scheduler=inverse_sqrt", "lr_scheduler.warmup_updates=10", "dataset.max_tokens=600",
        f"optimization.max_update={saved_updates + 4}", "common.log_interval=1",
        f"checkpoint.save_dir={save_dir}", "common.log_format=none",
    ])  # fmt: skip
    records = [json.loads(line) for line in (save_dir / "train_log.jsonl").read_text().splitlines()]
    updates = [r["update"] for r in records if r["kind"] == "train"]
    assert updates == list(range(saved_updates + 1, saved_updates + 5))
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    resumed = load_checkpoint(save_dir / "checkpoint_last.pt")
    assert resumed["training_state"]["progress"]["num_updates"] == saved_updates + 4
    assert resumed["format_version"] == checkpoint_module.FORMAT_VERSION
