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


SPEECH_EXAMPLE = EXAMPLE.parent / "speech_to_text"


def compose_speech_example(name: str, capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run_cli(
        train_cli,
        ["--config-dir", str(SPEECH_EXAMPLE), "--config-name", name, "task.data=unused", "--cfg"],
        capsys,
    )
    assert code == 0, err
    return yaml.safe_load(out)


@pytest.mark.parametrize("name", ["asr", "st", "asr_conformer"])
def test_speech_example_configs_compose(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = compose_speech_example(name, capsys)
    assert config["task"]["_name"] == "speech_to_text"
    assert config["model"]["ctc_head"] in ("target", "source")


def test_conformer_example_changes_only_the_encoder(capsys: pytest.CaptureFixture[str]) -> None:
    """asr_conformer.yaml is the benchmark's Conformer-vs-Transformer comparison: everything
    but the encoder must stay asr.yaml's, or the comparison measures something else."""
    transformer = compose_speech_example("asr", capsys)
    conformer = compose_speech_example("asr_conformer", capsys)
    assert conformer["model"]["_name"] == "s2t_conformer"
    for group in ("task", "criterion", "optimizer", "lr_scheduler", "dataset", "optimization"):
        assert conformer[group] == transformer[group], group
    shared = set(transformer["model"]) & set(conformer["model"]) - {
        "_name",
        "encoder_ffn_embed_dim",
    }
    differing = {key for key in shared if transformer["model"][key] != conformer["model"][key]}
    assert not differing
    # The macaron pair of half-width feed-forwards holds the Transformer layer's parameters.
    assert (
        2 * conformer["model"]["encoder_ffn_embed_dim"]
        == transformer["model"]["encoder_ffn_embed_dim"]
    )
