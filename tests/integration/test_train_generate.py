"""preprocess -> train -> generate -> score through the real CLIs, on tiny data in tmp_path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmtkit.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from nmtkit_cli.average_checkpoints import cli_main as average_cli
from nmtkit_cli.export import cli_main as export_cli
from nmtkit_cli.generate import cli_main as generate_cli
from nmtkit_cli.score import cli_main as score_cli
from nmtkit_cli.train import cli_main as train_cli


def train_args(data_dir: Path, save_dir: Path, *extra: str) -> list[str]:
    return [
        f"task.data={data_dir}",
        "model=transformer_tiny",
        "model.share_all_embeddings=true",
        "model.dropout=0.1",
        "criterion=label_smoothed_cross_entropy",
        "criterion.label_smoothing=0.1",
        "optimizer=adam",
        "optimizer.lr=0.005",
        "lr_scheduler=inverse_sqrt",
        "lr_scheduler.warmup_updates=10",
        "dataset.max_tokens=600",
        "common.log_interval=1",
        "common.log_format=simple",
        "generation.max_len_b=12",
        f"checkpoint.save_dir={save_dir}",
        *extra,
    ]


def train_log(save_dir: Path, kind: str = "train") -> list[dict]:
    lines = (save_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def run_cli(cli_main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:  # noqa: ANN001
    try:
        cli_main(argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    save_dir = tmp_path_factory.mktemp("run") / "ckpt"
    train_cli(
        train_args(
            data_dir,
            save_dir,
            "optimization.max_update=60",
            "generation.eval_bleu=true",
            "checkpoint.save_interval_updates=20",
            "dataset.validate_interval_updates=20",
        )  # fmt: skip
    )
    return save_dir


def test_run_directory_records(trained: Path) -> None:
    for name in (
        "config.yaml",
        "env.json",
        "train_log.jsonl",
        "checkpoint_last.pt",
        "checkpoint_best.pt",
    ):
        assert (trained / name).is_file(), name
    env = json.loads((trained / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["data"]["fingerprint"]
    records = train_log(trained)
    assert [r["update"] for r in records] == list(range(1, 61))
    for key in ("loss", "nll_loss", "ppl", "wps", "ups", "wpb", "bsz", "lr", "gnorm", "wall"):
        assert key in records[0]
    assert records[-1]["loss"] < records[0]["loss"]
    validations = train_log(trained, "valid")
    assert len(validations) >= 3 and "bleu" in validations[-1]
    numbered = sorted(p.name for p in trained.glob("checkpoint_*_*.pt"))
    assert "checkpoint_1_20.pt" in numbered or any(n.endswith("_20.pt") for n in numbered)


def test_checkpoint_is_self_contained(
    trained: Path, data_dir: Path, raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(trained / "checkpoint_last.pt")
    assert state["format_version"] == FORMAT_VERSION
    assert state["config"]["model"]["encoder_embed_dim"] == 16
    assert state["task"]["sentencepiece"]["src"]  # SentencePiece model bytes travel along
    # Generate with the data directory out of reach.
    hidden = data_dir.with_name("hidden-data-bin")
    data_dir.rename(hidden)
    try:
        output = tmp_path / "hyp.txt"
        code, _, err = run_cli(
            generate_cli,
            [f"checkpoint={trained / 'checkpoint_best.pt'}", f"input={raw_dir / 'test.src'}",
             f"output={output}", "beam=3", "batch_size=5"],
            capsys,
        )  # fmt: skip
    finally:
        hidden.rename(data_dir)
    assert code == 0, err
    hypotheses = output.read_text().splitlines()
    assert len(hypotheses) == len((raw_dir / "test.src").read_text().splitlines())
    code, out, err = run_cli(
        score_cli,
        [f"hyp={output}", f"ref={raw_dir / 'test.tgt'}", "metrics=[bleu,chrf]", "format=json"],
        capsys,
    )
    assert code == 0, err
    assert set(json.loads(out)) == {"bleu", "chrf"}


def test_validation_bleu_equals_generate_then_score(
    trained: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last_bleu = train_log(trained, "valid")[-1]["bleu"]
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    code, out, err = run_cli(
        generate_cli,
        [f"checkpoint={trained / 'checkpoint_last.pt'}", f"data={data_dir}", "subset=valid",
         "format=jsonl", "max_len_b=12", "batch_size=64"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    hyp.write_text("\n".join(r["hypotheses"][0]["text"] for r in records) + "\n")
    ref.write_text("\n".join(r["reference"] for r in records) + "\n")
    code, out, err = run_cli(score_cli, [f"hyp={hyp}", f"ref={ref}", "format=json"], capsys)
    assert code == 0, err
    assert json.loads(out)["bleu"]["score"] == pytest.approx(last_bleu, abs=1e-6)


def test_generate_formats_empty_lines_and_order(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("alpha bravo\n\ncharlie delta echo foxtrot golf\nkilo\n")
    code, out, err = run_cli(
        generate_cli,
        [
            f"checkpoint={trained / 'checkpoint_last.pt'}",
            f"input={source}",
            "batch_size=2",
            "nbest=2",
            "beam=3",
        ],
        capsys,
    )
    assert code == 0, err
    lines = out.split("\n")[:-1]
    assert len(lines) == 8 and lines[2] == lines[3] == ""
    code, out, _ = run_cli(
        generate_cli,
        [f"checkpoint={trained / 'checkpoint_last.pt'}", f"input={source}", "format=fairseq"],
        capsys,
    )
    assert [line.split("\t")[0] for line in out.splitlines()][:5] == [
        "S-0",
        "H-0",
        "D-0",
        "P-0",
        "S-1",
    ]
    # Alone or in a batch with others: the same translation.
    single = tmp_path / "one.txt"
    single.write_text("kilo\n")
    _, alone, _ = run_cli(
        generate_cli, [f"checkpoint={trained / 'checkpoint_last.pt'}", f"input={single}"], capsys
    )
    _, together, _ = run_cli(
        generate_cli, [f"checkpoint={trained / 'checkpoint_last.pt'}", f"input={source}"], capsys
    )
    assert together.split("\n")[3] == alone.strip("\n")


def test_export_and_average_generate_identically(
    trained: Path, raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "model.pt"
    assert (
        run_cli(
            export_cli,
            [f"checkpoint={trained / 'checkpoint_last.pt'}", f"output={exported}"],
            capsys,
        )[0]
        == 0
    )
    assert "training_state" not in load_checkpoint(exported)
    assert exported.stat().st_size < (trained / "checkpoint_last.pt").stat().st_size
    outputs = []
    for checkpoint in (trained / "checkpoint_last.pt", exported):
        code, out, err = run_cli(
            generate_cli, [f"checkpoint={checkpoint}", f"input={raw_dir / 'valid.src'}"], capsys
        )
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    # Averaging one checkpoint with itself changes nothing.
    averaged = tmp_path / "avg.pt"
    last = trained / "checkpoint_last.pt"
    assert run_cli(average_cli, [f"inputs=[{last},{last}]", f"output={averaged}"], capsys)[0] == 0
    for key, value in load_checkpoint(last)["model"].items():
        assert torch.equal(load_checkpoint(averaged)["model"][key], value)
    # Ensemble of the same model twice equals the model alone.
    code, out, _ = run_cli(
        generate_cli, [f"checkpoint=[{last},{exported}]", f"input={raw_dir / 'valid.src'}"], capsys
    )
    assert code == 0 and out == outputs[0]


def test_exact_resume(data_dir: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ("dataset.max_tokens=300", "dataset.disable_validation=true")
    train_cli(train_args(data_dir, straight, "optimization.max_update=16", *common))
    train_cli(train_args(data_dir, resumed, "optimization.max_update=8", *common))
    train_cli(train_args(data_dir, resumed, "optimization.max_update=16", *common))
    straight_losses = [(r["update"], r["loss"], r["gnorm"]) for r in train_log(straight)]
    resumed_losses = [(r["update"], r["loss"], r["gnorm"]) for r in train_log(resumed)]
    assert len(straight_losses) == 16
    assert resumed_losses == straight_losses  # identical, not just close
    # The same command once more: nothing left to train, nothing appended.
    train_cli(train_args(data_dir, resumed, "optimization.max_update=16", *common))
    assert len(train_log(resumed)) == 16


def test_bad_checkpoints_are_one_line_errors(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    newer = tmp_path / "newer.pt"
    state = load_checkpoint(trained / "checkpoint_last.pt")
    save_checkpoint(state, newer)
    raw = torch.load(newer, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, newer)
    for path, expected in (
        (tmp_path / "missing.pt", "checkpoint not found"),
        (corrupt, "not a readable nmtkit checkpoint"),
        (newer, "written by a newer nmtkit"),
    ):
        code, _, err = run_cli(generate_cli, [f"checkpoint={path}", "input=-"], capsys)
        assert code == 1 and expected in err and str(path) in err
        assert err.count("\n") == 1


def test_stdin_streams_line_by_line(trained: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "nmtkit_cli.generate", f"checkpoint={trained / 'checkpoint_last.pt'}", "beam=2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    replies = []
    for line in ("alpha bravo", "charlie", "delta echo foxtrot"):
        process.stdin.write(line + "\n")
        process.stdin.flush()
        replies.append(process.stdout.readline())  # answered before the next line is sent
    process.stdin.close()
    assert process.wait(timeout=60) == 0
    assert len(replies) == 3 and all(r.endswith("\n") for r in replies)


def test_resume_refuses_a_different_model(
    trained: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_dir = tmp_path / "copy"
    shutil.copytree(trained, save_dir)
    code, _, err = run_cli(
        train_cli,
        train_args(
            data_dir,
            save_dir,
            "optimization.max_update=70",
            "model.encoder_embed_dim=8",
            "model.decoder_embed_dim=8",
        ),
        capsys,
    )
    assert code == 1 and "does not fit the configured model" in err


def test_generate_refuses_data_with_other_dictionaries(
    trained: Path, raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nmtkit_cli.preprocess import cli_main as preprocess_cli

    other = tmp_path / "other-bin"
    preprocess_cli(
        ["source_lang=src", "target_lang=tgt", f"trainpref={raw_dir / 'train'}",
         f"testpref={raw_dir / 'test'}", f"destdir={other}", "bpe=none"]
    )  # fmt: skip
    checkpoint = f"checkpoint={trained / 'checkpoint_last.pt'}"
    code, _, err = run_cli(generate_cli, [checkpoint, f"data={other}"], capsys)
    assert code == 1 and "dict.src.txt differs from the checkpoint's dictionary" in err
    code, _, err = run_cli(generate_cli, [checkpoint, "input=-", "prefix_size=1"], capsys)
    assert code == 1 and "prefix_size=1: forced prefixes come from the references" in err


def test_generate_names_the_line_with_invalid_utf8(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "latin1.txt"
    source.write_bytes(b"alpha bravo\ngr\xf6\xdfe\n")
    code, _, err = run_cli(
        generate_cli, [f"checkpoint={trained / 'checkpoint_last.pt'}", f"input={source}"], capsys
    )
    assert code == 1
    assert f"{source}:2: invalid UTF-8 (byte 0xf6 at byte 3 of the line)" in err


def test_bf16_generation_casts_the_weights_once(
    trained: Path, raw_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nmtkit.inference import load_for_inference

    checkpoint = trained / "checkpoint_last.pt"
    _, models, _ = load_for_inference([str(checkpoint)], torch.device("cpu"), torch.bfloat16)
    assert {parameter.dtype for parameter in models[0].parameters()} == {torch.bfloat16}
    outputs = {}
    for precision in ("fp32", "bf16"):
        code, out, err = run_cli(
            generate_cli,
            [f"checkpoint={checkpoint}", f"input={raw_dir / 'valid.src'}", "format=jsonl",
             f"precision={precision}"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        outputs[precision] = [json.loads(line) for line in out.splitlines()]
    fp32, bf16 = outputs["fp32"], outputs["bf16"]
    assert len(bf16) == len(fp32) == len((raw_dir / "valid.src").read_text().splitlines())
    # Scores are computed in float32 from bf16 logits: close to fp32, not equal.
    agreeing = sum(
        a["hypotheses"][0]["text"] == b["hypotheses"][0]["text"] for a, b in zip(fp32, bf16)
    )
    assert agreeing >= 0.5 * len(fp32)  # a barely trained model: close calls flip
    for a, b in zip(fp32, bf16):
        if a["hypotheses"][0]["text"] == b["hypotheses"][0]["text"]:
            assert abs(a["hypotheses"][0]["score"] - b["hypotheses"][0]["score"]) < 0.1
