"""`nmtkit-score` end to end: main(cfg), the Hydra command line, files, stdin and errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from nmtkit.config.launcher import run_cli
from nmtkit.errors import ConfigError, DataError
from nmtkit_cli.score import ScoreConfig, cli_main, main, read_segments

HYPOTHESES = ["The cat sat on the mat.", "Hello world, how are you?", "Guten Tag in Berlin"]
REFERENCE = ["The cat is sitting on the mat.", "hello world, how are you doing?", "Good day"]
SECOND_REFERENCE = ["A cat sat on the mat.", "Hello world, how are you?", "Good day in Berlin"]


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> str:
    path.write_text("".join(line + newline for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "hyp": write_lines(tmp_path / "hyp.en", HYPOTHESES),
        "ref": write_lines(tmp_path / "ref.en", REFERENCE),
        "ref2": write_lines(tmp_path / "ref2.en", SECOND_REFERENCE),
        "short": write_lines(tmp_path / "short.en", REFERENCE[:2]),
    }


def run_score(argv: list[str]) -> None:
    run_cli(
        main,
        config_name="nmtkit_score",
        config_class=ScoreConfig,
        groups={},
        top_level={"nmtkit_score": ScoreConfig},
        argv=argv,
        program="nmtkit-score",
    )


def run_score_failing(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_score(argv)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("nmtkit-score: error: ")
    return captured.err


def test_main_text_output_matches_sacrebleu(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    report = main(ScoreConfig(hyp=files["hyp"], ref=files["ref"]))
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCE])
    assert list(report) == ["bleu"]
    assert report["bleu"]["score"] == pytest.approx(expected.score, abs=1e-9)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"BLEU = {expected.score:.2f} ")
    assert lines[0].endswith(report["bleu"]["signature"])


def test_main_json_output_and_output_file(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "scores" / "test.json"
    config = ScoreConfig(
        hyp=files["hyp"],
        ref=[files["ref"]],
        metrics=["bleu", "chrf", "ter", "wer"],
        format="json",
        output=str(output),
    )
    report = main(config)
    printed = json.loads(capsys.readouterr().out)
    assert printed == report == json.loads(output.read_text(encoding="utf-8"))
    # WER comes with its normalised variant (lower-cased, punctuation removed) right after it.
    assert list(printed) == ["bleu", "chrf", "ter", "wer", "wer_normalised"]
    for entry in printed.values():
        assert set(entry) == {"name", "score", "signature", "details"}
    assert printed["chrf"]["score"] == pytest.approx(
        sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCE]).score
    )
    assert printed["ter"]["score"] == pytest.approx(
        sacrebleu.corpus_ter(HYPOTHESES, [REFERENCE]).score
    )
    assert printed["wer"]["details"]["reference_words"] == sum(len(r.split()) for r in REFERENCE)


def test_command_line_text_with_single_ref(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_score([f"hyp={files['hyp']}", f"ref={files['ref']}", "metrics=[bleu,chrf]"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" = ")[0] for line in lines] == ["BLEU", "chrF2"]
    assert "nrefs:1|" in lines[0]


def test_command_line_json_with_multiple_refs(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_score(
        [
            f"hyp={files['hyp']}",
            f"ref=[{files['ref']},{files['ref2']}]",
            "metrics=[bleu,wer]",
            "format=json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    references = [REFERENCE, SECOND_REFERENCE]
    assert report["bleu"]["score"] == pytest.approx(
        sacrebleu.corpus_bleu(HYPOTHESES, references).score, abs=1e-9
    )
    assert report["bleu"]["signature"].startswith("nrefs:2|")
    assert report["wer"]["signature"].startswith("nrefs:1|")


@pytest.mark.parametrize(
    ("metrics_argument", "expected"),
    [
        ("metrics=chrf", ["chrf"]),
        ("metrics=[ter,bleu]", ["ter", "bleu"]),
        ("metrics='bleu,wer'", ["bleu", "wer", "wer_normalised"]),
        ("metrics=[WER]", ["wer", "wer_normalised"]),
        ("metrics=[cer]", ["cer", "cer_normalised"]),
    ],
)
def test_metrics_argument_forms(
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    metrics_argument: str,
    expected: list[str],
) -> None:
    run_score([f"hyp={files['hyp']}", f"ref={files['ref']}", metrics_argument, "format=json"])
    assert list(json.loads(capsys.readouterr().out)) == expected


def test_wer_and_cer_are_reported_raw_and_normalised(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_score([f"hyp={files['hyp']}", f"ref={files['ref']}", "metrics=[wer,cer]"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    normalised = "normalised (lower-cased, punctuation removed) = "
    assert lines[0].startswith("WER = ") and "|case:mixed|punct:kept|" in lines[0]
    assert lines[1].startswith(f"WER {normalised}") and "|case:lc|punct:removed|" in lines[1]
    assert lines[2].startswith("CER = ") and "|case:mixed|punct:kept|tok:char|" in lines[2]
    assert lines[3].startswith(f"CER {normalised}") and "|case:lc|punct:removed|" in lines[3]


def edits(details: dict[str, int]) -> int:
    return details["substitutions"] + details["deletions"] + details["insertions"]


def test_json_has_raw_and_normalised_wer_and_cer(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_score([f"hyp={files['hyp']}", f"ref={files['ref']}", "metrics=[wer,cer]", "format=json"])
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["wer", "wer_normalised", "cer", "cer_normalised"]
    for name in ("wer", "cer"):
        raw, normalised = report[name], report[f"{name}_normalised"]
        assert raw["name"] == name and normalised["name"] == f"{name}_normalised"
        assert "case:mixed|punct:kept" in raw["signature"]
        assert "case:lc|punct:removed" in normalised["signature"]
        # REFERENCE differs from HYPOTHESES in case and punctuation: normalising removes
        # edits (the CER rate itself may rise, as its denominator loses the punctuation).
        assert edits(normalised["details"]) < edits(raw["details"])
    assert report["cer"]["details"]["reference_chars"] == sum(len(r) for r in REFERENCE)


def test_no_duplicate_when_raw_wer_is_already_normalised(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_score(
        [
            f"hyp={files['hyp']}",
            f"ref={files['ref']}",
            "metrics=[wer,cer]",
            "wer_lowercase=true",
            "wer_remove_punctuation=true",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" = ")[0] for line in lines] == ["WER", "CER"]
    assert all("|case:lc|punct:removed|" in line for line in lines)


def test_unknown_metric_is_one_line_and_exit_code_1(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    error = run_score_failing(
        [f"hyp={files['hyp']}", f"ref={files['ref']}", "metrics=[bleu,meteor]"], capsys
    )
    assert "'meteor'" in error
    assert "known: bleu, chrf, ter, wer, cer" in error


def test_line_count_mismatch_names_both_files_and_counts(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    error = run_score_failing([f"hyp={files['hyp']}", f"ref={files['short']}"], capsys)
    assert f"{files['hyp']} has 3 lines" in error
    assert f"{files['short']} has 2" in error


def test_missing_files_are_named(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.en")
    error = run_score_failing([f"hyp={files['hyp']}", f"ref=[{files['ref']},{missing}]"], capsys)
    assert f"{missing}: no such file" in error
    error = run_score_failing([f"hyp={missing}", f"ref={files['ref']}"], capsys)
    assert f"{missing}: no such file" in error


def test_missing_ref_setting_fails_cleanly(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    error = run_score_failing([f"hyp={files['hyp']}"], capsys)
    assert "ref" in error


def test_invalid_values_are_reported_together(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    error = run_score_failing(
        [f"hyp={files['hyp']}", f"ref={files['ref']}", "format=xml", "tokenize=moses"], capsys
    )
    assert "format=xml" in error and "tokenize=moses" in error


def test_invalid_utf8_names_file_and_line(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "latin1.en"
    broken.write_bytes(b"fine\n" + "café\n".encode("latin-1") + b"x\n")
    error = run_score_failing([f"hyp={files['hyp']}", f"ref={broken}"], capsys)
    assert f"{broken}:2: not valid UTF-8" in error


def test_hypotheses_from_stdin(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCE]).score
    stdin_bytes = "".join(line + "\n" for line in HYPOTHESES).encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin_bytes), encoding="utf-8"))
    run_score(["hyp=-", f"ref={files['ref']}", "format=json"])
    assert json.loads(capsys.readouterr().out)["bleu"]["score"] == pytest.approx(expected)
    # An in-memory text stream without a byte buffer works too.
    monkeypatch.setattr(sys, "stdin", io.StringIO("only one line\n"))
    error = run_score_failing(["hyp=-", f"ref={files['ref']}"], capsys)
    assert "<stdin> has 1 lines" in error


def test_stdin_is_only_for_hyp(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    error = run_score_failing([f"hyp={files['hyp']}", "ref=-"], capsys)
    assert "ref=-" in error


def test_line_ends_follow_sacrebleu(tmp_path: Path) -> None:
    no_final_newline = tmp_path / "a.txt"
    no_final_newline.write_bytes(b"one\ntwo")
    assert read_segments(str(no_final_newline)) == ["one", "two"]
    windows = tmp_path / "b.txt"
    windows.write_bytes("\ufeffone  \r\ntwo\r\n".encode())
    assert read_segments(str(windows)) == ["one", "two"]
    blank_last_line = tmp_path / "c.txt"
    blank_last_line.write_bytes(b"one\ntwo\n\n")
    assert read_segments(str(blank_last_line)) == ["one", "two", ""]
    # Only '\n' separates segments; other Unicode line breaks stay inside the segment.
    unicode_break = tmp_path / "d.txt"
    unicode_break.write_bytes("a\u2028b\n".encode())
    assert read_segments(str(unicode_break)) == ["a\u2028b"]
    empty = tmp_path / "e.txt"
    empty.write_bytes(b"")
    assert read_segments(str(empty)) == []


def test_empty_files_are_a_data_error(tmp_path: Path) -> None:
    empty_hyp, empty_ref = tmp_path / "hyp", tmp_path / "ref"
    empty_hyp.write_bytes(b"")
    empty_ref.write_bytes(b"")
    with pytest.raises(DataError, match="no lines to score"):
        main(ScoreConfig(hyp=str(empty_hyp), ref=str(empty_ref)))


def test_main_validates_a_config_built_in_python(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="unknown metric 'rouge'"):
        main(ScoreConfig(hyp=files["hyp"], ref=files["ref"], metrics=["rouge"]))


def test_numeric_file_names_from_hydra_stay_paths() -> None:
    # Hydra reads `ref=2024` as an int.
    assert ScoreConfig(hyp="h", ref=2024).reference_paths() == ["2024"]
    assert ScoreConfig(hyp="h", ref=["a", "b"]).reference_paths() == ["a", "b"]


def test_cli_main_reads_sys_argv(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        sys, "argv", ["nmtkit-score", f"hyp={files['hyp']}", f"ref={files['ref']}", "metrics=wer"]
    )
    cli_main()
    assert capsys.readouterr().out.startswith("WER = ")


def test_console_command_exit_codes(files: dict[str, str]) -> None:
    command = [sys.executable, "-m", "nmtkit_cli.score", f"hyp={files['hyp']}"]
    success = subprocess.run(
        [*command, f"ref={files['ref']}"], capture_output=True, text=True, check=False
    )
    assert success.returncode == 0, success.stderr
    assert success.stdout.startswith("BLEU = ")
    failure = subprocess.run(
        [*command, f"ref={files['short']}"], capture_output=True, text=True, check=False
    )
    assert failure.returncode == 1
    assert "has 3 lines" in failure.stderr and "Traceback" not in failure.stderr
