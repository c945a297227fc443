"""The Python API (`nmtkit.load(...).translate/score/transcribe`) and what nmtkit-generate prints
through it (fairseq's base-2 scores, the closing summary, bpe_model= for checkpoints without
SentencePiece). Uses the committed tiny checkpoint; nothing is trained here."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sentencepiece
import soundfile
import torch
from test_train_generate import run_cli

import nmtkit
from nmtkit.api import Translation, Translator
from nmtkit.checkpoint import load_checkpoint, save_checkpoint
from nmtkit.config.train import restore_train_config
from nmtkit.data.dictionary import Dictionary
from nmtkit.errors import ConfigError, DataError, NmtkitError
from nmtkit.tasks import TASKS
from nmtkit_cli.generate import cli_main as generate_cli
from nmtkit_cli.preprocess import cli_main as preprocess_cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "checkpoints"
CHECKPOINT = FIXTURES / "format1_tiny.pt"
SOURCES = (FIXTURES / "input.txt").read_text().splitlines()
FAST = {"beam": 4, "max_len_b": 12}
"""Search options of these tests: short hypotheses keep them fast on a busy CPU."""


@pytest.fixture(scope="module")
def model() -> Translator:
    return nmtkit.load(CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def without_sentencepiece(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the fixture as if trained on a fairseq data-bin: no SentencePiece inside, its model)."""
    folder = tmp_path_factory.mktemp("no-spm")
    state = load_checkpoint(CHECKPOINT)
    spm = folder / "spm.model"
    spm.write_bytes(state["task"]["sentencepiece"]["src"])
    state["task"]["sentencepiece"] = {"src": None, "tgt": None}
    save_checkpoint(state, folder / "model.pt")
    return folder / "model.pt", spm


# --- translate -----------------------------------------------------------------------------------


def test_translate_keeps_input_order_and_empty_inputs(model: Translator) -> None:
    sources = [SOURCES[6], "", SOURCES[2], "   ", SOURCES[0], SOURCES[3]]  # mixed lengths
    together = model.translate(sources, batch_size=2, **FAST)
    alone = [model.translate([s], **FAST)[0] if s.strip() else "" for s in sources]
    assert together == alone
    assert together[1] == together[3] == "" and all(together[i] for i in (0, 2, 4, 5))
    assert model.translate([], **FAST) == []


def test_translate_equals_nmtkit_generate(
    model: Translator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        generate_cli,
        [f"checkpoint={CHECKPOINT}", f"input={FIXTURES / 'input.txt'}", "beam=4", "max_len_b=12",
         "max_tokens=40", "batch_size=null"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert model.translate(SOURCES, **FAST) == out.splitlines()


def test_nbest_with_scores(model: Translator) -> None:
    results = model.translate(SOURCES[:3] + [""], nbest=3, return_scores=True, **FAST)
    assert len(results) == 4 and results[3] == []
    for hypotheses in results[:3]:
        assert len(hypotheses) == 3
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
        for h in hypotheses:
            assert isinstance(h, Translation) and h.text
            assert len(h.positional_scores) == len(h.tokens) + 1  # </s> scored last
            # lenpen=1: the score is the mean log-probability per token, </s> included.
            assert h.score == pytest.approx(sum(h.positional_scores) / len(h.positional_scores))
    texts = model.translate(SOURCES[:2], nbest=2, **FAST)
    assert [len(t) for t in texts] == [2, 2] and all(isinstance(t, str) for t in texts[0])


def test_score_of_a_greedy_hypothesis_equals_its_search_score(model: Translator) -> None:
    best = [h[0] for h in model.translate(SOURCES, beam=1, return_scores=True, max_len_b=12)]
    forced = model.score(SOURCES, [h.text for h in best])
    compared = 0
    for hypothesis, scored in zip(best, forced):
        assert len(scored.positional_scores) == len(scored.tokens) + 1
        assert scored.score == pytest.approx(sum(scored.positional_scores))
        # Re-encoding the text may choose other pieces than search did; compare when not.
        if scored.tokens == hypothesis.tokens:
            compared += 1
            assert scored.positional_scores == pytest.approx(hypothesis.positional_scores, abs=1e-4)
            assert scored.score == pytest.approx(sum(hypothesis.positional_scores), abs=1e-4)
    assert compared >= len(SOURCES) // 2
    # Ensembles average probabilities: the same model twice scores as the model alone.
    twice = nmtkit.load([CHECKPOINT, CHECKPOINT], device="cpu").score(SOURCES[:2], ["A", "B"])
    assert [s.score for s in twice] == pytest.approx([s.score for s in model.score(SOURCES[:2], ["A", "B"])], abs=1e-5)  # fmt: skip


def test_bf16_precision(model: Translator) -> None:
    half = nmtkit.load(CHECKPOINT, device="cpu", precision="bf16")
    assert {p.dtype for p in half.models[0].parameters()} == {torch.bfloat16}
    texts = half.translate(SOURCES[:4], **FAST)
    assert len(texts) == 4 and all(isinstance(t, str) and t for t in texts)
    assert all(isinstance(s.score, float) for s in half.score(SOURCES[:2], texts[:2]))


def test_user_mistakes_are_one_line_errors(model: Translator) -> None:
    with pytest.raises(
        ConfigError, match="unknown option beem; valid options: return_scores, beam"
    ):
        model.translate(["a"], beem=5)
    with pytest.raises(ConfigError, match=r"beam='5': must be int"):
        model.translate(["a"], beam="5")
    with pytest.raises(ConfigError, match="nbest=3: must be between 1 and beam=2"):
        model.translate(["a"], beam=2, nbest=3)
    with pytest.raises(ConfigError, match="must be a list of strings"):
        model.translate("a sentence")
    with pytest.raises(ConfigError, match="one target per source"):
        model.score(["a", "b"], ["A"])
    with pytest.raises(ConfigError, match="this checkpoint translates text"):
        model.transcribe(["a.flac"])
    with pytest.raises(ConfigError, match=r"max_tokens=2: translate\(\) sources\[1\] has 3 tokens"):
        model.translate(["", "juliet kilo"], max_tokens=2, batch_size=None)
    with pytest.raises(ConfigError, match="precision=fp8"):
        nmtkit.load(CHECKPOINT, precision="fp8")
    for error in (ConfigError, DataError):
        assert issubclass(error, NmtkitError)


# --- bpe_model= ----------------------------------------------------------------------------------


def test_bpe_model_detokenizes_a_checkpoint_without_sentencepiece(
    model: Translator,
    without_sentencepiece: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoint, spm = without_sentencepiece
    expected = model.translate(SOURCES, **FAST)
    # Without it, text is split on whitespace as fairseq data-bin models expect: raw words are
    # unknown, pre-encoded pieces work, and the output is pieces.
    bare = nmtkit.load(checkpoint, device="cpu")
    pieces = [" ".join(model.task.source_encoder.encode_pieces(line)) for line in SOURCES]
    assert [t.replace(" ", "").replace("\u2581", " ").strip()
            for t in bare.translate(pieces, **FAST)] == expected  # fmt: skip
    with_spm = nmtkit.load(checkpoint, device="cpu", bpe_model=spm)
    assert with_spm.translate(SOURCES, **FAST) == expected
    code, out, err = run_cli(
        generate_cli,
        [f"checkpoint={checkpoint}", f"bpe_model={spm}", f"input={FIXTURES / 'input.txt'}",
         "beam=4", "max_len_b=12"],
        capsys,
    )  # fmt: skip
    assert code == 0 and out.splitlines() == expected, err
    # A SentencePiece model that did not make the dictionary is refused.
    other = tmp_path / "other.model"
    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["Guten Morgen, wie geht es dir heute?"] * 20),
        model_writer=writer, vocab_size=30, model_type="char",
    )  # fmt: skip
    other.write_bytes(writer.getvalue())
    with pytest.raises(DataError, match=rf"bpe_model={other}: only \d+ of the \d+ symbols"):
        nmtkit.load(checkpoint, device="cpu", bpe_model=other)
    with pytest.raises(ConfigError, match="carries its own SentencePiece model, which differs"):
        nmtkit.load(CHECKPOINT, device="cpu", bpe_model=other)
    nmtkit.load(CHECKPOINT, device="cpu", bpe_model=spm)  # its own model: accepted
    code, _, err = run_cli(
        generate_cli, [f"checkpoint={checkpoint}", f"bpe_model={tmp_path / 'no.model'}"], capsys
    )
    assert code == 1 and err.count("\n") == 1 and "no.model: file not found" in err


# --- nmtkit-generate format=fairseq and its summary -------------------------------------------------


@pytest.fixture(scope="module")
def binarized_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test split binarized with the fixture's SentencePiece model and dictionary."""
    folder = tmp_path_factory.mktemp("fixture-bin")
    state = load_checkpoint(CHECKPOINT)
    (folder / "spm.model").write_bytes(state["task"]["sentencepiece"]["src"])
    Dictionary.from_state_dict(state["task"]["dictionaries"]["src"]).save(folder / "dict.txt")
    (folder / "test.src").write_text("\n".join(SOURCES[:4]) + "\n")
    references = ["JULIET CHARLIE", "JULIET KILO HOTEL JULIET", "ALPHA JULIET", "LIMA"]
    (folder / "test.tgt").write_text("\n".join(references) + "\n")
    preprocess_cli(
        ["source_lang=src", "target_lang=tgt", f"testpref={folder / 'test'}",
         f"destdir={folder / 'bin'}", f"bpe_model={folder / 'spm.model'}",
         f"srcdict={folder / 'dict.txt'}", f"tgtdict={folder / 'dict.txt'}"]
    )  # fmt: skip
    return folder / "bin"


def test_fairseq_format_prints_base_2_scores_and_a_summary(
    binarized_test: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [f"checkpoint={CHECKPOINT}", f"data={binarized_test}", "beam=4", "max_len_b=12"]
    code, out, err = run_cli(generate_cli, [*argv, "format=jsonl"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    code, out, err = run_cli(generate_cli, [*argv, "format=fairseq"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    by_kind: dict[str, list[list[str]]] = {}
    for line in lines[:-1]:
        by_kind.setdefault(line[:2], []).append(line.split("\t"))
    assert [row[1] for row in by_kind["S-"]] == SOURCES[:4]
    assert by_kind["T-"][3][1] == "LIMA"
    for record, h, d, p in zip(records, by_kind["H-"], by_kind["D-"], by_kind["P-"], strict=True):
        best = record["hypotheses"][0]
        # fairseq: float32 score / ln 2, printed as Python prints a float.
        base2 = (torch.tensor(best["score"], dtype=torch.float32) / math.log(2)).item()
        assert h[1] == d[1] == str(base2)
        assert h[2] == " ".join(best["tokens"]) and d[2] == best["text"]
        assert p[1] == " ".join(f"{x / math.log(2):.4f}" for x in best["token_log_probs"])
    assert lines[-1].startswith("Generate test with beam=4: BLEU = ")
    summary = err.splitlines()
    assert "nmtkit-generate: NOTE: hypothesis and token scores are output in base 2" in summary
    assert any(
        line.startswith("nmtkit-generate: Translated 4 sentences (") and "sentences/s" in line
        and line.endswith("tokens/s)") for line in summary
    )  # fmt: skip
    assert any(line.startswith("nmtkit-generate: Generate test with beam=4: BLEU = ")
               and "nrefs:1" in line for line in summary)  # fmt: skip


def test_fairseq_source_and_reference_lines_show_unknowns_as_fairseq_does(
    model: Translator,
) -> None:
    from nmtkit.generation.translate import TranslationResult
    from nmtkit_cli.generate import fairseq_reference, fairseq_source

    result = TranslationResult(
        id=0, source="x", source_pieces="\u2581JU LIET <unk> \u2581KILO", reference="y",
        hypotheses=[], reference_pieces="\u2581KILO <unk> \u2581LIMA",
    )  # fmt: skip
    assert fairseq_source(model.task, result) == "JULIET<unk> KILO"
    assert fairseq_reference(model.task, result) == "KILO<<unk>> LIMA"


# --- speech --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny speech model (random weights, fixed seed) with the fixture's
    SentencePiece model and dictionary as its target side."""
    state = load_checkpoint(CHECKPOINT)
    config = dict(state["config"])
    config["task"] = {"_name": "speech_to_text", "data": ""}
    config["model"] = {
        "_name": "s2t_transformer", "input_feat_per_channel": 80, "conv_channels": 8,
        "encoder_embed_dim": 16, "encoder_ffn_embed_dim": 16, "encoder_layers": 1,
        "encoder_attention_heads": 2, "decoder_embed_dim": 16, "decoder_ffn_embed_dim": 16,
        "decoder_layers": 1, "decoder_attention_heads": 2, "dropout": 0.0,
    }  # fmt: skip
    task_state = {
        "name": "speech_to_text", "target": "src_text",
        "features": {"num_mel_bins": 80, "sample_rate": 16000},
        "dictionaries": {"target": state["task"]["dictionaries"]["tgt"], "source": None},
        "sentencepiece": {"target": state["task"]["sentencepiece"]["tgt"]},
    }  # fmt: skip
    restored = restore_train_config(config)
    torch.manual_seed(0)
    network = TASKS.build(restored.task, state=task_state).build_model(restored.model)
    path = tmp_path_factory.mktemp("speech") / "asr.pt"
    save_checkpoint({"config": config, "model": network.state_dict(), "task": task_state}, path)
    return path


def test_transcribe_takes_files_and_waveforms(speech_checkpoint: Path, tmp_path: Path) -> None:
    speech = nmtkit.load(speech_checkpoint, device="cpu")
    rng = np.random.default_rng(0)
    at_16k = (0.3 * np.sin(np.arange(8000) * 0.2) + rng.normal(0, 0.01, 8000)).astype(np.float32)
    at_8k = at_16k[::2].copy()
    soundfile.write(tmp_path / "a.wav", at_16k, 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "b.wav", at_8k, 8000, subtype="FLOAT")
    options: dict[str, Any] = {"beam": 2, "max_len_b": 5}
    from_files = speech.transcribe([tmp_path / "a.wav", str(tmp_path / "b.wav")], **options)
    from_waveforms = speech.transcribe(
        [torch.from_numpy(at_16k), (at_8k, 8000), np.stack([at_16k, at_16k])], **options
    )
    assert from_waveforms == [*from_files, from_files[0]]
    assert speech.transcribe([at_8k], sample_rate=8000, **options) == from_files[1:]
    scored = speech.transcribe([at_16k], return_scores=True, **options)[0][0]
    forced = speech.score([at_16k], [scored.text])[0]
    if forced.tokens == scored.tokens:
        assert forced.score == pytest.approx(sum(scored.positional_scores), abs=1e-4)
    with pytest.raises(ConfigError, match="this checkpoint decodes speech"):
        speech.translate(["hello"])
    with pytest.raises(DataError, match=r"audio\[0\]: audio contains NaN"):
        speech.transcribe([np.full(400, np.nan, dtype=np.float32)])
