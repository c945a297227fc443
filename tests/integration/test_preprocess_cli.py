"""`nmtkit-preprocess` end to end on tiny generated corpora."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece

from nmtkit.data import binarizer
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import MMapIndexedDataset
from nmtkit.data.text_encoder import TextEncoder
from nmtkit.preprocess import PreprocessConfig, preprocess
from nmtkit_cli.preprocess import cli_main

GERMAN = (
    "das haus ist groß die katze schläft der hund läuft schnell und klein rot grün baum im "
    "garten vogel singt laut auto fährt langsam"
).split()
ENGLISH = (
    "the house is big the cat sleeps the dog runs fast and small red green tree in garden "
    "bird sings loudly car drives slowly"
).split()
SPLIT_SIZES = {"train": 300, "valid": 20, "test": 20}
FAIRSEQ_PYTHON = Path(os.environ.get("FAIRSEQ_PYTHON", "/work/fairseq-venv/bin/python"))


def write_corpus(folder: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Word-aligned de/en pairs in folder/{train,valid,test}.{de,en}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    corpus = {}
    for split, size in SPLIT_SIZES.items():
        german, english = [], []
        for _ in range(size):
            words = [rng.randrange(len(GERMAN)) for _ in range(rng.randint(2, 7))]
            german.append(" ".join(GERMAN[i] for i in words))
            english.append(" ".join(ENGLISH[i] for i in words))
        write_lines(folder / f"{split}.de", german)
        write_lines(folder / f"{split}.en", english)
        corpus[split] = (german, english)
    return corpus


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "raw")
    return tmp_path / "raw"


def run(*settings: str) -> None:
    cli_main(list(settings))


def run_failing(capsys: pytest.CaptureFixture[str], *settings: str) -> str:
    """Runs the CLI expecting a user error; returns the one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        run(*settings)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("nmtkit-preprocess: error: ")
    assert "\n" not in error and "Traceback" not in error
    return error


def splits(raw: Path, *names: str) -> list[str]:
    return [f"{name}pref={raw / name}" for name in names or ("train", "valid", "test")]


def common(raw: Path, destdir: Path, *split_names: str) -> list[str]:
    """Languages, input prefixes and destdir settings."""
    return ["source_lang=de", "target_lang=en", *splits(raw, *split_names), f"destdir={destdir}"]


def read_items(destdir: Path, split: str, lang: str) -> list[list[int]]:
    dataset = MMapIndexedDataset(destdir / f"{split}.de-en.{lang}")
    return [dataset[i].tolist() for i in range(len(dataset))]


def manifest(destdir: Path) -> dict:
    return json.loads((destdir / "preprocess.json").read_text(encoding="utf-8"))


def data_files(destdir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in destdir.iterdir() if path.suffix != ".json"}


def assert_round_trip(destdir: Path, raw: Path) -> None:
    """Every binarized item decodes back to its input line."""
    for lang in ("de", "en"):
        encoder = TextEncoder.from_data_dir(destdir, lang)
        for split in SPLIT_SIZES:
            lines = (raw / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            items = read_items(destdir, split, lang)
            assert [encoder.decode(item) for item in items] == lines
            assert all(item[-1] == 2 for item in items)


def test_joined_sentencepiece(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destdir = tmp_path / "bin"
    run(
        *common(raw, destdir),
        "bpe=sentencepiece",
        "bpe_vocab_size=64",
        "joined_dictionary=true",
    )
    expected = {"dict.de.txt", "dict.en.txt", "spm.model", "preprocess.json"} | {
        f"{split}.de-en.{lang}.{suffix}"
        for split in SPLIT_SIZES
        for lang in ("de", "en")
        for suffix in ("bin", "idx")
    }
    assert {path.name for path in destdir.iterdir()} == expected
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    assert (destdir / "dict.de.txt").read_bytes() == (destdir / "dict.en.txt").read_bytes()
    dictionary = Dictionary.load(destdir / "dict.de.txt")
    assert len(dictionary) % 8 == 0
    dictionary_words = (destdir / "dict.de.txt").read_text(encoding="utf-8").split()[::2]
    assert not {"<s>", "</s>", "<unk>", "<pad>"} & set(dictionary_words)

    info = manifest(destdir)
    assert info["format_version"] == 1 and info["task"] == "translation"
    assert (info["source_lang"], info["target_lang"]) == ("de", "en")
    assert info["bpe"] == {
        "type": "sentencepiece",
        "vocab_size": 64,
        "model_type": "unigram",
        "models": {"de": "spm.model", "en": "spm.model"},
    }
    assert info["dictionaries"] == {"de": "dict.de.txt", "en": "dict.en.txt"}
    assert len(info["fingerprint"]) == 64
    assert info["config"]["bpe_vocab_size"] == 64
    for split, size in SPLIT_SIZES.items():
        entry = info["splits"][split]
        assert entry["pairs"] == size and entry["dropped"] == {"empty_line": 0}
        for lang in ("de", "en"):
            raw_file = raw / f"{split}.{lang}"
            assert entry[lang]["sha256"] == hashlib.sha256(raw_file.read_bytes()).hexdigest()
            assert entry[lang]["lines"] == size
            assert entry[lang]["tokens"] == sum(map(len, read_items(destdir, split, lang)))
            assert entry[lang]["unk"] == 0 and entry[lang]["unk_rate"] == 0.0
    assert_round_trip(destdir, raw)
    summary = capsys.readouterr().out
    assert "train: 300 pairs (0 dropped)" in summary and "(joined)" in summary


def test_per_language_sentencepiece(raw: Path, tmp_path: Path) -> None:
    destdir = tmp_path / "bin"
    run(*common(raw, destdir), "bpe_vocab_size=40")
    info = manifest(destdir)
    assert info["bpe"]["models"] == {"de": "spm.de.model", "en": "spm.en.model"}
    assert (destdir / "spm.de.model").is_file() and (destdir / "spm.en.model").is_file()
    assert not (destdir / "spm.model").exists()
    german = Dictionary.load(destdir / "dict.de.txt")
    english = Dictionary.load(destdir / "dict.en.txt")
    assert german != english
    # Each model only knows its own language's letters ('ä' is German-only, 'y' English-only).
    assert any("ä" in symbol for symbol in german.symbols)
    assert not any("ä" in symbol for symbol in english.symbols)
    assert any("y" in symbol for symbol in english.symbols)
    assert not any("y" in symbol for symbol in german.symbols)
    assert_round_trip(destdir, raw)


def test_bpe_none_splits_on_whitespace(raw: Path, tmp_path: Path) -> None:
    destdir = tmp_path / "bin"
    run(*common(raw, destdir), "bpe=none", "padding_factor=1")
    info = manifest(destdir)
    assert info["bpe"]["type"] == "none" and info["bpe"]["models"] == {"de": None, "en": None}
    german = Dictionary.load(destdir / "dict.de.txt")
    assert set(german.symbols[4:]) == set(GERMAN)
    first_line = (raw / "train.de").read_text(encoding="utf-8").splitlines()[0]
    assert read_items(destdir, "train", "de")[0] == german.encode_line(first_line)
    assert_round_trip(destdir, raw)


def test_reused_dictionaries_without_training_data(raw: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    run(*common(raw, first), "bpe=none", "threshold=3")
    run(
        *common(raw, second, "valid"),
        "bpe=none",
        f"srcdict={first / 'dict.de.txt'}",
        f"tgtdict={first / 'dict.en.txt'}",
    )
    for name in ("dict.de.txt", "dict.en.txt", "valid.de-en.de.bin", "valid.de-en.en.idx"):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    assert not (second / "train.de-en.de.bin").exists()
    info = manifest(second)
    assert set(info["splits"]) == {"valid"}
    assert (
        info["reused_files"]["srcdict"]["sha256"]
        == hashlib.sha256((first / "dict.de.txt").read_bytes()).hexdigest()
    )


def test_workers_do_not_change_the_output(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binarizer, "CHUNK_LINES", 16)  # many chunks, all in flight at once
    spm_source = tmp_path / "spm_source"
    run(
        *common(raw, spm_source, "train"),
        "bpe_vocab_size=64",
        "joined_dictionary=true",
    )
    trained = ["bpe_vocab_size=64", "joined_dictionary=true"]  # SentencePiece trained here too
    for extra in (["bpe=none"], [f"bpe_model={spm_source / 'spm.model'}"], trained):
        outputs = []
        for workers in (1, 2):
            destdir = tmp_path / f"{extra[0].split('=')[0]}_{len(extra)}_{workers}"
            run(*common(raw, destdir), f"workers={workers}", *extra)
            files = data_files(destdir)
            if "spm.model" in files:  # its trainer record names the output path: compare pieces
                model = files.pop("spm.model")
                processor = sentencepiece.SentencePieceProcessor(model_proto=model)
                files["pieces"] = repr(
                    [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
                ).encode()
            outputs.append((files, manifest(destdir)["fingerprint"]))
        assert outputs[0] == outputs[1]
        assert len(outputs[0][0]) >= 14


def test_empty_lines_are_dropped_and_counted(raw: Path, tmp_path: Path) -> None:
    german = (raw / "train.de").read_text(encoding="utf-8").splitlines()
    english = (raw / "train.en").read_text(encoding="utf-8").splitlines()
    german[3], english[10], german[20], english[20] = "", "  ", "", ""
    write_lines(raw / "train.de", german)
    write_lines(raw / "train.en", english)
    destdir = tmp_path / "bin"
    run(*common(raw, destdir), "bpe=none")
    train = manifest(destdir)["splits"]["train"]
    assert train["dropped"] == {"empty_line": 3}
    assert train["pairs"] == 297 and train["de"]["lines"] == 300
    kept = [line for index, line in enumerate(german) if index not in (3, 10, 20)]
    encoder = TextEncoder.from_data_dir(destdir, "de")
    assert [encoder.decode(item) for item in read_items(destdir, "train", "de")] == kept


def test_byte_order_mark_and_crlf_line_ends_are_tolerated(raw: Path, tmp_path: Path) -> None:
    text = (raw / "train.de").read_text(encoding="utf-8")
    (raw / "train.de").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    destdir = tmp_path / "bin"
    run(*common(raw, destdir), "bpe=none")
    assert manifest(destdir)["splits"]["train"]["pairs"] == 300
    symbols = Dictionary.load(destdir / "dict.de.txt").symbols
    assert not [symbol for symbol in symbols if "\ufeff" in symbol or "\r" in symbol]
    encoder = TextEncoder.from_data_dir(destdir, "de")
    decoded = [encoder.decode(item) for item in read_items(destdir, "train", "de")]
    assert decoded == text.splitlines()


def test_missing_input_file_is_named(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (raw / "valid.en").unlink()
    error = run_failing(capsys, *common(raw, tmp_path / "bin"))
    assert f"validpref={raw / 'valid'}: {raw / 'valid.en'} not found" in error
    assert not (tmp_path / "bin").exists()


def test_line_count_mismatch_names_both_files(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(raw / "train.en", "a", encoding="utf-8") as file:
        file.write("one more line")  # no final newline: still a line
    error = run_failing(capsys, *common(raw, tmp_path / "bin"))
    assert (
        f"source/target line counts differ: {raw / 'train.de'} has 300 lines, "
        f"{raw / 'train.en'} has 301" in error
    )


def test_invalid_utf8_names_file_and_line(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (raw / "test.de").read_bytes().split(b"\n")
    lines[6] = b"gr\xf6\xdfe katze"  # latin-1, not UTF-8
    (raw / "test.de").write_bytes(b"\n".join(lines))
    error = run_failing(capsys, *common(raw, tmp_path / "bin"))
    assert f"{raw / 'test.de'}:7: invalid UTF-8 (byte 0xf6 at byte 3 of the line)" in error


def test_vocabulary_larger_than_data_supports(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = run_failing(capsys, *common(raw, tmp_path / "bin"), "bpe_vocab_size=5000")
    assert "bpe_vocab_size=5000: the training text" in error
    assert "set bpe_vocab_size<=" in error
    error = run_failing(capsys, *common(raw, tmp_path / "bin"), "bpe_vocab_size=10")
    assert "bpe_vocab_size=10: smaller than the" in error
    assert not (tmp_path / "bin").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["raw"]  # no temporary folder left


def test_existing_destdir_needs_overwrite(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destdir = tmp_path / "bin"
    settings = [*common(raw, destdir), "bpe=none"]
    run(*settings)
    error = run_failing(capsys, *settings)
    assert "already exists, built from the same inputs and settings" in error
    assert "pass overwrite=true" in error
    error = run_failing(capsys, *settings, "padding_factor=1")
    assert f"destdir={destdir} already exists and holds other data" in error
    assert "pass overwrite=true" in error

    run(*settings, "padding_factor=1", "overwrite=true")
    assert manifest(destdir)["config"]["padding_factor"] == 1
    assert len(Dictionary.load(destdir / "dict.de.txt")) == 4 + len(set(GERMAN))

    (destdir / "notes.md").write_text("mine", encoding="utf-8")
    error = run_failing(capsys, *settings, "overwrite=true")
    assert "does not write (notes.md); choose another destdir" in error
    assert (destdir / "notes.md").read_text(encoding="utf-8") == "mine"


def test_interrupted_run_leaves_no_destdir(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_binarize = binarizer.binarize_parallel_text
    calls = []

    def binarize_then_interrupt(*args, **kwargs):
        calls.append(real_binarize(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr("nmtkit.preprocess.text.binarize_parallel_text", binarize_then_interrupt)
    cfg = PreprocessConfig(
        source_lang="de",
        target_lang="en",
        trainpref=str(raw / "train"),
        destdir=str(tmp_path / "bin"),
        bpe="none",
    )
    with pytest.raises(KeyboardInterrupt):
        preprocess(cfg)
    assert calls  # the interruption came after files were written
    assert [path.name for path in tmp_path.iterdir()] == ["raw"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["target_lang=en"], "source_lang: required"),
        (["source_lang=de", "target_lang=de"], "target_lang=de: must differ from source_lang"),
        (["source_lang=de", "target_lang=en", "bpe=wordpiece"], "bpe=wordpiece: must be one of"),
        (["source_lang=de", "target_lang=en", "validpref=x"], "trainpref: required unless"),
        (["source_lang=de", "target_lang=en", "trainpref=x", "workers=0"], "workers=0"),
        (["source_lang=de", "target_lang=en", "trainpref=x", "no_such_key=1"], "no_such_key"),
    ],
)
def test_config_mistakes_are_one_line(
    capsys: pytest.CaptureFixture[str],
    settings: list[str],
    message: str,
) -> None:
    assert message in run_failing(capsys, *settings)


def test_console_script_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("nmtkit-preprocess")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "nmtkit_cli.preprocess"]
    result = subprocess.run(
        [*command, "source_lang=de", "target_lang=en", f"trainpref={tmp_path / 'nope'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"nmtkit-preprocess: error: trainpref={tmp_path / 'nope'}: "
        f"{tmp_path / 'nope.de'} not found; trainpref={tmp_path / 'nope'}: "
        f"{tmp_path / 'nope.en'} not found"
    ]


@pytest.mark.fairseq
@pytest.mark.skipif(not FAIRSEQ_PYTHON.exists(), reason="needs fairseq at /work/fairseq-venv")
def test_fairseq_reads_our_data_directory(raw: Path, tmp_path: Path) -> None:
    destdir = tmp_path / "bin"
    run(*common(raw, destdir), "bpe_vocab_size=64", "joined_dictionary=true")
    reader = (
        "import json, sys\n"
        "from fairseq.data import Dictionary\n"
        "from fairseq.data.indexed_dataset import MMapIndexedDataset\n"
        "folder = sys.argv[1]\n"
        "out = {}\n"
        "for lang in ('de', 'en'):\n"
        "    out['dict.' + lang] = Dictionary.load(f'{folder}/dict.{lang}.txt').symbols\n"
        "    for split in ('train', 'valid', 'test'):\n"
        "        data = MMapIndexedDataset(f'{folder}/{split}.de-en.{lang}')\n"
        "        out[f'{split}.{lang}'] = [data[i].tolist() for i in range(len(data))]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [str(FAIRSEQ_PYTHON), "-c", reader, str(destdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    for lang in ("de", "en"):
        assert theirs[f"dict.{lang}"] == Dictionary.load(destdir / f"dict.{lang}.txt").symbols
        for split in SPLIT_SIZES:
            assert theirs[f"{split}.{lang}"] == read_items(destdir, split, lang)
