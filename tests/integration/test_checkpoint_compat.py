"""Old checkpoints keep loading: every committed fixture, one per released format_version,
must load with weights_only=True and translate exactly as it did when it was written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nmtkit import checkpoint as checkpoint_module
from nmtkit.checkpoint import load_checkpoint
from nmtkit_cli.generate import cli_main as generate_cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "checkpoints"
CHECKPOINTS = sorted(FIXTURES.glob("format*_tiny.pt"))


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
