"""nmtkit-import-fairseq on committed fairseq checkpoints: the imported models generate exactly
what fairseq-generate printed, and bad or hostile files are refused with one line.

The fixtures (tests/fixtures/fairseq/, made by tests/fixtures/make_fairseq_fixture.sh) hold
real fairseq 0.12 checkpoints; fairseq itself is not needed here.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from nmtkit.checkpoint import load_checkpoint
from nmtkit.convert.fairseq_checkpoint import import_fairseq_checkpoint
from nmtkit.convert.restricted_unpickler import load_restricted
from nmtkit.errors import CheckpointError, DataError
from nmtkit_cli.generate import cli_main as generate_cli
from nmtkit_cli.import_fairseq import cli_main as import_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fairseq"

SEARCH = {
    "prenorm_shared": ["beam=5", "lenpen=1", "max_len_a=0", "max_len_b=200"],
    "postnorm_separate": ["beam=5", "lenpen=1", "max_len_a=0.6", "max_len_b=3"],
}
"""The search options fairseq-generate ran with (see the fixture script)."""


def fairseq_hypotheses(path: Path) -> dict[int, tuple[float, str]]:
    """H- lines of fairseq-generate (or nmtkit-generate format=fairseq): id -> (score, text)."""
    hypotheses = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("H-"):
            name, score, text = line.split("\t")
            hypotheses[int(name[2:])] = (float(score), text)
    return hypotheses


def import_fixture(variant: str, output: Path, *extra: str) -> None:
    import_cli([
        f"checkpoint={FIXTURES / variant / 'checkpoint.pt'}", f"data={FIXTURES / variant}",
        f"bpe_model={FIXTURES / 'spm.model'}", f"output={output}", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("variant", sorted(SEARCH))
def test_imported_model_generates_what_fairseq_generated(variant: str, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    import_fixture(variant, model)
    output = tmp_path / "hyp.txt"
    generate_cli([
        f"checkpoint={model}", f"input={FIXTURES / 'test.de'}", f"output={output}",
        "format=fairseq", "device=cpu", *SEARCH[variant],
    ])  # fmt: skip
    expected = fairseq_hypotheses(FIXTURES / variant / "fairseq_generate.txt")
    got = fairseq_hypotheses(output)
    assert len(expected) == len((FIXTURES / "test.de").read_text().splitlines())
    assert {i: text for i, (_, text) in got.items()} == {i: t for i, (_, t) in expected.items()}
    for i, (score, _) in expected.items():
        assert got[i][0] == pytest.approx(score, abs=1e-4)  # both in base 2
    # D- lines: detokenized as fairseq's sentencepiece post-processing does.
    detokenized = {
        line.split("\t")[0][2:]: line.split("\t")[2]
        for line in output.read_text(encoding="utf-8").splitlines()
        if line.startswith("D-")
    }
    for i, (_, pieces) in expected.items():
        assert detokenized[str(i)] == pieces.replace(" ", "").replace("\u2581", " ").strip()


def test_imported_checkpoint_is_a_plain_nmtkit_checkpoint(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    import_fixture("postnorm_separate", model)
    state = load_checkpoint(model)  # weights_only=True: nothing pickled but containers
    config = state["config"]["model"]
    assert (config["encoder_layers"], config["encoder_embed_dim"]) == (2, 32)
    assert not config["encoder_normalize_before"] and not config["encoder_learned_pos"]
    assert config["share_decoder_input_output_embed"] and not config["share_all_embeddings"]
    assert state["imported_from"]["arch"] == "transformer_tiny"
    assert state["task"]["sentencepiece"]["de"] == (FIXTURES / "spm.model").read_bytes()


def read_fixture(variant: str) -> dict[str, Any]:
    return load_restricted(FIXTURES / variant / "checkpoint.pt")


def test_reads_omegaconf_configs_with_interpolations(tmp_path: Path) -> None:
    """Checkpoints whose cfg is a pickled omegaconf DictConfig (nested encoder/decoder options,
    `${...}` interpolations) import to the same model as the argparse form."""
    state = read_fixture("prenorm_shared")
    flat = vars(state["cfg"]["model"])
    nested: dict[str, Any] = {"encoder": {}, "decoder": {}}
    for key, value in flat.items():
        side, _, name = key.partition("_")
        if side in nested and name in ("embed_dim", "layers", "normalize_before", "learned_pos"):
            nested[side][name] = value
        else:
            nested[key] = value
    nested["max_source_positions"] = "${task.max_source_positions}"
    task = {"_name": "translation", "source_lang": "de", "target_lang": "en",
            "max_source_positions": flat["max_source_positions"]}  # fmt: skip
    state["cfg"] = OmegaConf.create({"model": nested, "task": task})
    torch.save(state, tmp_path / "omegaconf.pt")
    reference = import_fairseq_checkpoint(
        FIXTURES / "prenorm_shared" / "checkpoint.pt", FIXTURES / "prenorm_shared"
    )
    imported = import_fairseq_checkpoint(tmp_path / "omegaconf.pt", FIXTURES / "prenorm_shared")
    assert imported["config"]["model"] == reference["config"]["model"]
    assert all(torch.equal(imported["model"][k], v) for k, v in reference["model"].items())


class _RunsCode:
    """Pickles as a call of os.system: unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_runs_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    state = read_fixture("postnorm_separate")
    state["args"] = argparse.Namespace(arch="transformer", payload=_RunsCode(marker))
    torch.save(state, tmp_path / "hostile.pt")
    with pytest.raises(SystemExit) as exit_info:
        import_cli([f"checkpoint={tmp_path / 'hostile.pt'}", f"data={FIXTURES / 'postnorm_separate'}",
                    f"output={tmp_path / 'model.pt'}"])  # fmt: skip
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"names {os.system.__module__}.system" in error
    assert not marker.exists() and not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize(
    ("arch", "task", "message"),
    [
        ("lstm", "translation", "fairseq arch 'lstm' is not one of fairseq's transformer"),
        ("s2t_transformer_s", "speech_to_text", "fairseq arch 's2t_transformer_s'"),
        ("transformer", "translation_multi_simple_epoch", "task 'translation_multi_simple_epoch'"),
    ],
)
def test_refuses_other_models(arch: str, task: str, message: str, tmp_path: Path) -> None:
    state = read_fixture("postnorm_separate")
    state["cfg"]["model"].arch = state["cfg"]["model"]._name = arch
    state["cfg"]["task"]["_name"] = task
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=message):
        import_fairseq_checkpoint(tmp_path / "other.pt", FIXTURES / "postnorm_separate")


def test_refuses_options_that_change_the_model_by_name(tmp_path: Path) -> None:
    state = read_fixture("postnorm_separate")
    state["cfg"]["model"].cross_self_attention = True
    state["cfg"]["model"].activation_fn = "gelu_accurate"
    state["cfg"]["model"].decoder_output_dim = 64
    torch.save(state, tmp_path / "variant.pt")
    with pytest.raises(CheckpointError) as error:
        import_fairseq_checkpoint(tmp_path / "variant.pt", FIXTURES / "postnorm_separate")
    for name in (
        "cross_self_attention=True",
        "activation_fn=gelu_accurate",
        "decoder_output_dim=64",
    ):
        assert name in str(error.value)


def test_refuses_embeddings_that_disagree_with_the_dictionary(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "postnorm_separate", data)
    lines = (data / "dict.en.txt").read_text(encoding="utf-8").splitlines()
    (data / "dict.en.txt").write_text("\n".join(lines[:-8]) + "\n", encoding="utf-8")
    rows = len(lines) + 4  # the special symbols come first
    with pytest.raises(
        CheckpointError,
        match=rf"decoder.embed_tokens.weight has {rows} rows but .*dict.en.txt gives {rows - 8}",
    ):
        import_fairseq_checkpoint(data / "checkpoint.pt", data)


def test_refuses_a_sentencepiece_model_that_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="bpe_model="):
        import_fairseq_checkpoint(
            FIXTURES / "postnorm_separate" / "checkpoint.pt",
            FIXTURES / "postnorm_separate",
            bpe_model=FIXTURES / "test.de",
        )
