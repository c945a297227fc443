"""The config system end to end: overrides, errors, experiment files, --cfg/--help, plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from test_train_generate import run_cli

from nmtkit.config import launcher
from nmtkit_cli.train import cli_main as train_cli

BASE = ["task.data=unused", "optimization.max_update=5", "dataset.max_tokens=64"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(train_cli, argv, capsys)


def test_overrides_select_preset_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--cfg", *BASE, "model=transformer_tiny", "model.encoder_layers=3"], capsys)
    assert code == 0
    config = yaml.safe_load(out)
    assert config["model"]["_name"] == "transformer"
    assert config["model"]["encoder_layers"] == 3
    assert config["model"]["encoder_embed_dim"] == 16  # from the transformer_tiny preset
    assert "defaults" not in config


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.no_such_key=1", "Key 'no_such_key' not in 'TransformerConfig'"),
        ("model.dropout=abc", "could not be converted to Float"),
        ("model=no_such_model", "Could not find 'model/no_such_model'"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([*BASE, override], capsys)
    assert code == 1
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_validation_collects_all_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["task.data=x", "model=transformer_tiny", "model.encoder_embed_dim=15", "model.dropout=2"],
        capsys,
    )
    assert code == 1
    for fragment in (
        "model.encoder_embed_dim=15: must be divisible by encoder_attention_heads=2",
        "model.dropout=2.0",
        "dataset.max_tokens/batch_size",
        "optimization.max_update/max_epoch/stop_time_hours",
    ):
        assert fragment in err
    assert err.count("\n") == 1


def test_experiment_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.yaml").write_text(
        textwrap.dedent(
            """
            # nmtkit-train --config-dir DIR --config-name tiny
            defaults:
              - nmtkit_train
              - override /model: transformer_tiny
              - override /optimizer: sgd
              - _self_
            task:
              data: some-data
            model:
              decoder_layers: 2
            optimization:
              max_update: 7
            dataset:
              batch_size: 4
            """
        )
    )
    code, out, err = run(
        ["--config-dir", str(tmp_path), "--config-name", "tiny", "optimizer.lr=0.5", "--cfg"],
        capsys,
    )
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["model"]["decoder_layers"] == 2 and config["model"]["encoder_embed_dim"] == 16
    assert config["optimizer"]["_name"] == "sgd" and config["optimizer"]["lr"] == 0.5
    assert config["optimization"]["max_update"] == 7
    assert not (tmp_path / "outputs").exists() and not Path("outputs").exists()


def test_help_lists_groups_and_documented_settings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help", "model=transformer_tiny"], capsys)
    assert code == 0
    model_line = next(line for line in out.splitlines() if line.startswith("  model: "))
    assert "s2t_transformer, " in model_line and "transformer_big" in model_line
    assert "model.encoder_layers=1" in out
    assert "# Seed for python, numpy and torch" in out


def write_plugin(folder: Path) -> None:
    folder.mkdir()
    (folder / "__init__.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from torch import nn
            from nmtkit.models import register_model
            from nmtkit.registry import ComponentConfig

            @dataclass(kw_only=True)
            class ToyConfig(ComponentConfig):
                width: int = 4
                '''Width of the toy.'''

            @register_model("toy_model", ToyConfig)
            class ToyModel(nn.Module):
                def __init__(self, cfg, src_vocab_size, tgt_vocab_size, padding_idx=1):
                    super().__init__()
                    self.proj = nn.Linear(cfg.width, tgt_vocab_size)
            """
        )
    )


def test_user_dir_plugin_registers_a_selectable_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(tmp_path / "nmtkit_test_plugin")
    argv = [*BASE, f"common.user_dir={tmp_path / 'nmtkit_test_plugin'}", "model=toy_model"]
    code, out, err = run(["--cfg", *argv, "model.width=7"], capsys)
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["model"] == {"_name": "toy_model", "width": 7}
    code, out, _ = run(["--help", *argv], capsys)
    assert "toy_model" in out and "# Width of the toy." in out


def test_missing_user_dir_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([*BASE, f"common.user_dir={tmp_path / 'absent'}"], capsys)
    assert code == 1 and "no such file or folder" in err


def test_installed_entry_point_plugins_are_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loaded = []

    class FakeEntryPoint:
        def load(self) -> None:
            loaded.append(True)

    def fake_entry_points(group: str) -> list[FakeEntryPoint]:
        assert group == "nmtkit.plugins"
        return [FakeEntryPoint()]

    monkeypatch.setattr(launcher.importlib.metadata, "entry_points", fake_entry_points)
    launcher.load_installed_plugins()
    assert loaded == [True]


def test_console_script_exits_nonzero_without_traceback(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "nmtkit_cli.train", "model.nope=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("nmtkit-train: error:") and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder, nothing written


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+foo=1", "foo: no such setting"),
        ("+common.typo_seed=3", "common.typo_seed: no such setting"),
        ("+model.extra=1", "model.extra: no such setting"),
        ("hydra.run.dir=outputs/x", "hydra.* settings are not used by nmtkit"),
        ("+hydra.job.chdir=true", "hydra.* settings are not used by nmtkit"),
    ],
)
def test_added_and_hydra_keys_are_refused_not_dropped(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["--cfg", *BASE, "model=transformer_tiny", override], capsys)
    assert code == 1 and expected in err and err.count("\n") == 1


def test_double_plus_overrides_an_existing_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--cfg", *BASE, "++common.seed=7"], capsys)
    assert code == 0 and yaml.safe_load(out)["common"]["seed"] == 7


def test_help_shows_lists_inline_version_and_required_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from nmtkit_cli.score import cli_main as score_cli

    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "  optimizer.betas=[0.9,0.999]    # " in out
    code, out, _ = run_cli(score_cli, ["--help"], capsys)
    assert code == 0 and "  hyp=???    # Hypothesis file" in out and "  metrics=[bleu]" in out
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("nmtkit-train ") and out.count("\n") == 1


def test_multirun_sweeps_the_cartesian_product(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [f"task.data={data_dir}", "model=transformer_tiny", "optimization.max_update=1",
              "dataset.max_tokens=300", "dataset.disable_validation=true",
              "common.log_format=none"]  # fmt: skip
    code, _, err = run(
        ["-m", *common, "optimizer.lr=5e-4,1e-3", "model.dropout=0.1,0.3",
         f"checkpoint.save_dir={tmp_path}/lr${{optimizer.lr}}_do${{model.dropout}}"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert runs == ["lr0.0005_do0.1", "lr0.0005_do0.3", "lr0.001_do0.1", "lr0.001_do0.3"]
    saved = yaml.safe_load((tmp_path / "lr0.001_do0.3" / "config.yaml").read_text())
    assert saved["optimizer"]["lr"] == 0.001 and saved["model"]["dropout"] == 0.3
    assert "sweep run 4/4" in err
    # Without ${...} in save_dir each run gets a subfolder named by its swept settings.
    code, _, err = run(["-m", *common, "common.seed=1,2", f"checkpoint.save_dir={tmp_path}/s"],
                       capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["common.seed=1", "common.seed=2"]
    # One save_dir for several runs would mix them: refused before any run starts.
    code, _, err = run(["-m", *common, "common.seed=1,2", f"checkpoint.save_dir={tmp_path}/x${{optimizer.lr}}"],
                       capsys)  # fmt: skip
    assert code == 1 and "same checkpoint.save_dir" in err and not (tmp_path / "x0.0005").exists()


def test_submitit_local_launcher_runs_the_sweep_as_jobs(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra's submitit launcher settings through submitit's local executor (Slurm: the same
    with hydra/launcher=submitit_slurm and hydra.launcher.partition=...)."""
    pytest.importorskip("submitit")
    code, _, err = run(
        ["-m", f"task.data={data_dir}", "model=transformer_tiny", "optimization.max_update=1",
         "dataset.max_tokens=300", "dataset.disable_validation=true", "common.log_format=none",
         "common.seed=choice(3)", f"checkpoint.save_dir={tmp_path}/runs",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
         f"hydra.launcher.submitit_folder={tmp_path}/jobs/%j"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "submitted sweep run 1/1 as job" in err
    status = yaml.safe_load((tmp_path / "runs" / "common.seed=3" / "run_status.json").read_text())
    assert status["status"] == "finished"
    code, _, err = run(["hydra/launcher=submitit_local", *BASE], capsys)
    assert code == 1 and "add -m" in err
