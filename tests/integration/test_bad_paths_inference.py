"""Bad paths of the inference commands (generate, score, average, export): each gives one line
on stderr, a non-zero exit, and leaves no partial or truncated output behind.

They use the committed tiny checkpoint (tests/fixtures/checkpoints), or variants of it written
to tmp_path, so nothing is trained here.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train_generate import run_cli

from nmtkit.checkpoint import load_checkpoint, save_checkpoint
from nmtkit_cli.average_checkpoints import cli_main as average_cli
from nmtkit_cli.export import cli_main as export_cli
from nmtkit_cli.generate import cli_main as generate_cli
from nmtkit_cli.score import cli_main as score_cli

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "checkpoints" / "format1_tiny.pt"
needs_permissions = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions"
)


def one_line_error(code: int, err: str, *expected: str) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("nmtkit-"), err
    for text in expected:
        assert text in err, err


def variant(tmp_path: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the fixture checkpoint with `change` applied to its state."""
    state = load_checkpoint(FIXTURE)
    change(state)
    path = tmp_path / name
    save_checkpoint(state, path)
    return path


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


# --- nmtkit-generate: output= ----------------------------------------------------------------


def test_generate_checks_output_before_loading_and_creates_parents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("alpha bravo\n")
    # A folder as output= is refused before the (missing) checkpoint is even looked at.
    code, _, err = run_cli(
        generate_cli, [f"checkpoint={tmp_path / 'missing.pt'}", f"input={source}",
                       f"output={tmp_path}"], capsys,
    )  # fmt: skip
    one_line_error(code, err, f"output={tmp_path}: is a directory")
    output = tmp_path / "new" / "folder" / "hyp.txt"
    code, _, err = run_cli(
        generate_cli, [f"checkpoint={FIXTURE}", f"input={source}", f"output={output}"], capsys
    )
    assert code == 0, err
    assert len(output.read_text().splitlines()) == 1 and not temporaries(output.parent)


@needs_permissions
def test_generate_refuses_a_read_only_output_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run_cli(
            generate_cli, [f"checkpoint={tmp_path / 'missing.pt'}", "input=-",
                           f"output={folder / 'hyp.txt'}"], capsys,
        )  # fmt: skip
    finally:
        folder.chmod(0o755)
    one_line_error(code, err, f"output={folder}", "cannot write there", "permission denied")


def test_failed_generate_keeps_the_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"alpha bravo\ngr\xf6\xdfe\n")  # the second chunk is not UTF-8
    output = tmp_path / "hyp.txt"
    output.write_text("an earlier run's output\n")
    code, _, err = run_cli(
        generate_cli,
        [f"checkpoint={FIXTURE}", f"input={source}", f"output={output}", "buffer_size=1"],
        capsys,
    )
    one_line_error(code, err, f"{source}:2: invalid UTF-8")
    assert output.read_text() == "an earlier run's output\n"
    assert not temporaries(tmp_path)


# --- nmtkit-generate: stdin and stdout -------------------------------------------------------


def test_generate_with_stdin_closed_is_one_line(tmp_path: Path) -> None:
    command = f"exec {sys.executable} -m nmtkit_cli.generate checkpoint={FIXTURE} 0<&-"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "nmtkit-generate: error: input: standard input is closed; give input=FILE or pipe text in\n"
    )
    assert result.stdout == ""


class UnwritableStdout(io.StringIO):
    """A stdout whose descriptor was opened read-only (`1</dev/null`): writes fail with EBADF."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")


def test_generate_with_stdout_closed_or_unwritable_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("alpha bravo\n")
    argv = [f"checkpoint={FIXTURE}", f"input={source}"]
    monkeypatch.setattr(sys, "stdout", None)  # what Python makes of `1>&-`
    code, _, err = run_cli(generate_cli, argv, capsys)
    one_line_error(code, err, "output: standard output is closed; give output=FILE")
    monkeypatch.setattr(sys, "stdout", UnwritableStdout())
    code, _, err = run_cli(generate_cli, argv, capsys)
    one_line_error(code, err, "output: cannot write to standard output")


# --- nmtkit-generate: inputs longer than the model accepts ----------------------------------


def test_generate_refuses_or_truncates_inputs_over_max_source_positions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    def limit_positions(state: dict[str, Any]) -> None:
        state["config"]["model"]["max_source_positions"] = 10

    checkpoint = variant(tmp_path, "short.pt", limit_positions)
    source = tmp_path / "in.txt"
    source.write_text("alpha\n\n" + "juliet hotel kilo juliet india charlie " * 3 + "\n")
    argv = [f"checkpoint={checkpoint}", f"input={source}"]
    code, _, err = run_cli(generate_cli, argv, capsys)
    one_line_error(
        code, err, f"input={source} line 3: ", "more than the model's max_source_positions=10",
        "truncate_source=true",
    )  # fmt: skip
    code, out, err = run_cli(generate_cli, [*argv, "truncate_source=true"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 3 and out.splitlines()[1] == ""
    assert f"input={source} line 3: " in caplog.text and "truncated" in caplog.text


# --- nmtkit-generate: its own keys in messages ----------------------------------------------


def test_generate_messages_name_its_own_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("juliet kilo\njuliet hotel kilo juliet india charlie\n")  # 3 and 7 tokens
    code, _, err = run_cli(
        generate_cli, [f"checkpoint={FIXTURE}", f"input={source}", "max_tokens=4"], capsys
    )
    one_line_error(code, err, "max_tokens=4: ", f"input={source} line 2 has 7 tokens")
    assert "dataset." not in err
    code, _, err = run_cli(generate_cli, [f"checkpoint={FIXTURE}", "device=cuda:99"], capsys)
    one_line_error(code, err, "device=cuda:99: ")
    assert "common." not in err
    code, _, err = run_cli(generate_cli, [f"checkpoint={FIXTURE}", "batch_size=0"], capsys)
    one_line_error(code, err, "batch_size=0: must be >= 1")


# --- checkpoints: shapes and the weights_only refusal ----------------------------------------


def test_generate_names_the_tensor_whose_shape_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "encoder.layers.0.ffn.fc1.weight"

    def shrink(state: dict[str, Any]) -> None:
        state["model"][key] = state["model"][key][:8].clone()

    checkpoint = variant(tmp_path, "shrunk.pt", shrink)
    code, _, err = run_cli(generate_cli, [f"checkpoint={checkpoint}", "input=-"], capsys)
    one_line_error(code, err, f"tensor {key} has shape [8, 16] in the checkpoint, [32, 16]")


def test_pickled_objects_are_refused_without_advising_weights_only_false(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "pickled.pt"
    torch.save({"format_version": 1, "object": UnwritableStdout}, checkpoint)
    code, _, err = run_cli(generate_cli, [f"checkpoint={checkpoint}", "input=-"], capsys)
    one_line_error(code, err, str(checkpoint))
    assert "weights_only=False" not in err and "`weights_only`" not in err


# --- nmtkit-score output= --------------------------------------------------------------------


def test_score_output_is_checked_first_and_written_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("a b c\n")
    ref.write_text("a b c\n")
    # Refused before the (missing) hypothesis file is read.
    code, _, err = run_cli(score_cli, [f"hyp={tmp_path / 'none'}", f"ref={ref}",
                                   f"output={tmp_path}"], capsys)  # fmt: skip
    one_line_error(code, err, f"output={tmp_path}: is a directory")
    output = tmp_path / "scores" / "bleu.json"
    code, _, err = run_cli(score_cli, [f"hyp={hyp}", f"ref={ref}", f"output={output}"], capsys)
    assert code == 0, err
    assert '"bleu"' in output.read_text() and not temporaries(output.parent)
    ref.write_text("a b c\nd e\n")  # now the line counts differ: the old result stays
    code, _, err = run_cli(score_cli, [f"hyp={hyp}", f"ref={ref}", f"output={output}"], capsys)
    one_line_error(code, err, "line counts differ")
    assert '"bleu"' in output.read_text() and not temporaries(output.parent)


# --- nmtkit-average-checkpoints and nmtkit-export ---------------------------------------------


def test_average_and_export_check_output_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pt"
    code, _, err = run_cli(
        average_cli, [f"inputs=[{missing},{missing}]", f"output={tmp_path}"], capsys
    )
    one_line_error(code, err, f"output={tmp_path}: is a directory")
    code, _, err = run_cli(export_cli, [f"checkpoint={missing}", f"output={tmp_path}"], capsys)
    one_line_error(code, err, f"output={tmp_path}: is a directory")
    output = tmp_path / "out" / "model.pt"
    code, _, err = run_cli(export_cli, [f"checkpoint={FIXTURE}", f"output={output}"], capsys)
    assert code == 0, err
    assert load_checkpoint(output)["model"].keys() == load_checkpoint(FIXTURE)["model"].keys()


def test_average_refuses_different_dictionaries_or_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def rename_a_symbol(state: dict[str, Any]) -> None:
        for dictionary in state["task"]["dictionaries"].values():
            dictionary["symbols"][-1] = "renamed"

    def widen(state: dict[str, Any]) -> None:
        state["model"]["encoder.layer_norm_extra"] = torch.zeros(3)

    other_dictionary = variant(tmp_path, "other_dict.pt", rename_a_symbol)
    other_tensors = variant(tmp_path, "other_tensors.pt", widen)
    output = tmp_path / "averaged.pt"
    code, _, err = run_cli(
        average_cli, [f"inputs=[{FIXTURE},{other_dictionary}]", f"output={output}"], capsys
    )
    one_line_error(
        code, err, f"{other_dictionary}: cannot be averaged with {FIXTURE}: its src dictionary"
    )
    code, _, err = run_cli(
        average_cli, [f"inputs=[{FIXTURE},{other_tensors}]", f"output={output}"], capsys
    )
    one_line_error(code, err, "1 tensors not in", "encoder.layer_norm_extra")
    assert not output.exists() and not temporaries(tmp_path)


def test_speech_inputs_know_their_lines_and_truncate_to_max_frames(tmp_path: Path) -> None:
    from nmtkit.data.audio import FeatureConfig
    from nmtkit.data.dictionary import Dictionary
    from nmtkit.tasks.speech_to_text import SpeechToTextTask
    from tests.speech_corpus import write_speech_corpus

    manifest = write_speech_corpus(tmp_path, {"test": 2}, seed=1)["test"]
    # Only what reading and featurising audio uses; no checkpoint needed.
    task = SpeechToTextTask.__new__(SpeechToTextTask)
    task.features, task.tgt_dict = FeatureConfig(num_mel_bins=16), Dictionary()
    (from_manifest,) = task.read_inference_inputs(str(manifest), buffer_size=8)
    assert [task.input_location(item, i) for i, item in enumerate(from_manifest)] == [
        "line 2 (test_0001)",
        "line 3 (test_0002)",
    ]
    paths = tmp_path / "paths.txt"
    paths.write_text("".join(f"{item.path}\n" for item in from_manifest))
    chunks = list(task.read_inference_inputs(str(paths), buffer_size=1))
    assert [item.line for chunk in chunks for item in chunk] == [1, 2]
    full = task.inference_dataset(from_manifest)
    limit = int(full.src_sizes.min()) - 1
    cut = task.inference_dataset(from_manifest, max_source_positions=limit)
    assert full.src_sizes.min() > limit and cut.src_sizes.tolist() == [limit, limit]
    assert torch.equal(cut[0]["source"], full[0]["source"][:limit])
