"""The bundled translation example's config composes and stops by updates, not by time."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_train_generate import run_cli

from nmtkit_cli.train import cli_main as train_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "translation"


def test_translation_example_config_composes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        train_cli,
        ["--config-dir", str(EXAMPLE), "--config-name", "de_en_small", "task.data=unused", "--cfg"],
        capsys,
    )
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["model"]["encoder_layers"] == 2 and config["model"]["encoder_embed_dim"] == 256
    # The example must end by max_update on a busy machine too; the time limit is only a
    # guard, well above the ~5 minutes the updates take on 2 idle cores.
    assert config["optimization"]["max_update"] > 0
    assert config["optimization"]["stop_time_hours"] >= 0.2


def test_run_script_uses_the_config_and_bundled_data() -> None:
    script = (EXAMPLE / "run.sh").read_text()
    assert "--config-name de_en_small" in script
    for split in ("train", "valid", "test"):
        assert (EXAMPLE / "data" / f"{split}.de").is_file()
        assert (EXAMPLE / "data" / f"{split}.en").is_file()
