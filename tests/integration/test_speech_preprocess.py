"""`nmtkit-preprocess task=speech_to_text` end to end on the synthetic tone corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from nmtkit.data.audio import (
    FeatureConfig,
    change_speed,
    compute_fbank,
    num_frames,
    read_audio,
)
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import MMapIndexedDataset
from nmtkit.data.speech_manifest import read_manifest
from nmtkit.data.text_encoder import TextEncoder
from nmtkit.preprocess import feature_shards, speech
from nmtkit_cli.preprocess import cli_main
from tests.speech_corpus import write_speech_corpus

# Fewer pieces than the default 1000: six words' worth of text supports about 27.
PIECES = "bpe_vocab_size=24"
VOLATILE_CONFIG = ("destdir", "workers", "shard_size")


def exact_command(corpus: Path, destdir: Path, target: str = "src_text") -> list[str]:
    """The documented command, as a list of arguments."""
    return [
        "task=speech_to_text",
        f"train={corpus / 'train.tsv'}",
        f"valid={corpus / 'valid.tsv'}",
        f"test={corpus / 'test.tsv'}",
        f"target={target}",
        f"destdir={destdir}",
        "workers=2",
    ]


def run_failing(capsys: pytest.CaptureFixture[str], *settings: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(settings))
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("nmtkit-preprocess: error: ")
    assert "\n" not in error and "Traceback" not in error
    return error


def manifest_of(destdir: Path) -> dict[str, Any]:
    return json.loads((destdir / "preprocess.json").read_text(encoding="utf-8"))


def folder_bytes(destdir: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes() for path in destdir.iterdir() if path.name != "preprocess.json"
    }


def stable_json(destdir: Path) -> dict[str, Any]:
    manifest = manifest_of(destdir)
    for key in VOLATILE_CONFIG:
        manifest["config"].pop(key)
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("speech")
    write_speech_corpus(folder)
    return folder


@pytest.fixture(scope="module")
def built(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    destdir = tmp_path_factory.mktemp("out") / "asr"
    cli_main([*exact_command(corpus, destdir), PIECES, "shard_size=10"])
    return destdir


def test_exact_command_states_the_vocabulary_limit(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = run_failing(capsys, *exact_command(corpus, tmp_path / "out"))
    assert re.search(
        r"bpe_vocab_size=1000: the training text \(.*train\.tsv column src_text\) supports at "
        r"most \d+ SentencePiece pieces; set bpe_vocab_size<=\d+",
        error,
    )
    assert list(tmp_path.iterdir()) == []  # no destdir, no staging folder


def test_data_directory_holds_the_documented_files(corpus: Path, built: Path) -> None:
    info = manifest_of(built)
    assert info["task"] == "speech_to_text" and info["format_version"] == 1
    assert info["target"] == "src_text" and info["ctc_source"] is None
    assert info["features"] == {
        "num_mel_bins": 80,
        "sample_rate": 16000,
        "frame_length_ms": 25.0,
        "frame_shift_ms": 10.0,
        "dither": 0.0,
        "waveform_scale": 32768.0,
    }
    assert (info["cmvn"], info["target_spm"], info["target_dict"]) == (
        "global_cmvn.npz",
        "spm_target.model",
        "dict.target.txt",
    )
    dictionary = Dictionary.load(built / "dict.target.txt")
    encoder = TextEncoder(dictionary, (built / "spm_target.model").read_bytes())
    cfg = FeatureConfig()
    for split in ("train", "valid", "test"):
        utterances = read_manifest(corpus / f"{split}.tsv")
        entry = info["splits"][split]
        assert entry["utterances"] == len(utterances) and entry["skipped"] == {}
        assert info["inputs"][split]["path"] == str((corpus / f"{split}.tsv").resolve())
        ids = (built / f"{split}.ids.txt").read_text(encoding="utf-8").splitlines()
        assert ids == [utterance.id for utterance in utterances]
        fbank = MMapIndexedDataset(built / f"{split}.fbank")
        assert (built / f"{split}.fbank.idx").read_bytes()[17] == 12  # dtype code: float16
        frames = fbank.sizes // 80
        assert (fbank.sizes % 80 == 0).all() and entry["frames"] == int(frames.sum())
        assert frames.tolist() == [num_frames(u.n_samples, cfg) for u in utterances]
        hours = sum(u.n_samples for u in utterances) / 16000 / 3600
        assert entry["hours"] == pytest.approx(hours, abs=1e-6)
        targets = MMapIndexedDataset(built / f"{split}.target")
        assert [encoder.decode(targets[i]) for i in range(len(targets))] == [
            u.src_text for u in utterances
        ]
        assert all(targets[i][-1] == dictionary.eos() for i in range(len(targets)))
        assert entry["ctc_infeasible"] == 0 and entry["ctc_infeasible_ids"] == []
    first = read_manifest(corpus / "valid.tsv")[0]
    expected = compute_fbank(read_audio(first.audio), cfg).numpy().astype(np.float16)
    stored = MMapIndexedDataset(built / "valid.fbank")[0].reshape(-1, 80)
    assert np.array_equal(stored, expected)


def test_global_cmvn_is_exact_over_the_stored_training_features(built: Path) -> None:
    fbank = MMapIndexedDataset(built / "train.fbank")
    frames = np.concatenate([fbank[i].reshape(-1, 80) for i in range(len(fbank))])
    wide = frames.astype(np.float64)
    cmvn = np.load(built / "global_cmvn.npz")
    assert cmvn["mean"].dtype == np.float64 and cmvn["std"].shape == (80,)
    assert int(cmvn["frames"]) == len(frames) == manifest_of(built)["cmvn_frames"]
    np.testing.assert_allclose(cmvn["mean"], wide.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cmvn["std"], wide.std(axis=0), rtol=1e-9)


def test_output_is_byte_identical_for_any_worker_count_and_shard_size(
    corpus: Path, built: Path, tmp_path: Path
) -> None:
    other = tmp_path / "asr"
    settings = exact_command(corpus, other)
    cli_main([*settings[:-1], "workers=1", PIECES, "shard_size=7"])
    assert folder_bytes(other) == folder_bytes(built)
    assert stable_json(other) == stable_json(built)


def test_interrupted_extraction_resumes_and_gives_the_same_bytes(
    corpus: Path, built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destdir = tmp_path / "asr"
    settings = [*exact_command(corpus, destdir)[:-1], "workers=1", PIECES, "shard_size=10"]
    real_extract = feature_shards.extract_shard
    calls: list[Path] = []

    def interrupted_on_third_shard(job: feature_shards.ShardJob) -> Path:
        calls.append(job.path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_extract(job)

    monkeypatch.setattr(feature_shards, "extract_shard", interrupted_on_third_shard)
    with pytest.raises(SystemExit):
        cli_main(settings)
    assert not destdir.exists()
    (staging,) = tmp_path.glob(".asr.partial-*")
    finished = sorted(path.name for path in (staging / "shards").glob("*.npz"))
    assert finished == sorted(path.name for path in calls[:2])
    # What kill -9 can leave: a half-written temporary file, and a shard we spoil on purpose.
    (staging / "shards" / f"{finished[0]}.tmp-999").write_bytes(b"half")
    (staging / "shards" / finished[1]).write_bytes(b"garbage")

    calls.clear()
    monkeypatch.setattr(
        feature_shards, "extract_shard", lambda job: calls.append(job.path) or real_extract(job)
    )
    cli_main(settings)
    shards = -(-48 // 10) + -(-8 // 10) * 2
    assert len(calls) == shards - 1  # all but the one good shard of the first run
    assert not staging.exists()
    assert folder_bytes(destdir) == folder_bytes(built)
    assert stable_json(destdir) == stable_json(built)


def test_char_targets_and_ctc_source(corpus: Path, tmp_path: Path) -> None:
    destdir = tmp_path / "st"
    cli_main(
        [*exact_command(corpus, destdir, target="tgt_text"), "bpe=char", "ctc_source=src_text"]
    )
    info = manifest_of(destdir)
    assert info["bpe"]["type"] == "char"
    assert info["ctc_source"]["column"] == "src_text"
    target_dict = Dictionary.load(destdir / "dict.target.txt")
    symbols = [s for s in target_dict.symbols[4:] if not s.startswith("madeupword")]
    assert all(len(symbol) == 1 for symbol in symbols) and "ü" in symbols
    source = TextEncoder(
        Dictionary.load(destdir / "dict.source.txt"), (destdir / "spm_source.model").read_bytes()
    )
    target = TextEncoder(target_dict, (destdir / "spm_target.model").read_bytes())
    utterances = read_manifest(corpus / "test.tsv")
    sources = MMapIndexedDataset(destdir / "test.source")
    targets = MMapIndexedDataset(destdir / "test.target")
    assert [source.decode(sources[i]) for i in range(len(sources))] == [
        u.src_text for u in utterances
    ]
    assert [target.decode(targets[i]) for i in range(len(targets))] == [
        u.tgt_text for u in utterances
    ]
    assert "ctc_source_infeasible" in info["splits"]["train"]


# ---- speed perturbation --------------------------------------------------------------------
SPEEDS = "speed_perturb=[1.1,0.9,1.0]"  # any order: the copies are stored in ascending order


@pytest.fixture(scope="module")
def perturbed(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    destdir = tmp_path_factory.mktemp("out") / "asr_sp"
    cli_main([*exact_command(corpus, destdir), PIECES, "shard_size=10", SPEEDS])
    return destdir


def test_speed_perturbation_triples_the_training_split_only(
    corpus: Path, built: Path, perturbed: Path
) -> None:
    info = manifest_of(perturbed)
    assert info["speed_perturb"] == [0.9, 1.0, 1.1] and manifest_of(built)["speed_perturb"] is None
    assert info["fingerprint"] != manifest_of(built)["fingerprint"]
    utterances = read_manifest(corpus / "train.tsv")
    ids = (perturbed / "train.ids.txt").read_text(encoding="utf-8").splitlines()
    assert ids == [name for u in utterances for name in (f"{u.id}_sp0.9", u.id, f"{u.id}_sp1.1")]
    speeds = (perturbed / "train.speed.txt").read_text(encoding="utf-8").splitlines()
    assert speeds == ["0.9", "1.0", "1.1"] * len(utterances)
    frames = MMapIndexedDataset(perturbed / "train.fbank").sizes.reshape(-1, 3) // 80
    for slow, original, fast in frames.tolist():
        assert abs(slow - original / 0.9) <= 1 and abs(fast - original / 1.1) <= 1
    cfg = FeatureConfig()
    assert frames[:, 1].tolist() == [num_frames(u.n_samples, cfg) for u in utterances]
    # One thread, as in extraction: resampling's sums come out in another order with more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        slow = change_speed(read_audio(utterances[0].audio), 0.9, 16000)
    finally:
        torch.set_num_threads(threads)
    expected = compute_fbank(slow, cfg).numpy().astype(np.float16)
    assert np.array_equal(
        MMapIndexedDataset(perturbed / "train.fbank")[0].reshape(-1, 80), expected
    )
    # The targets are the original texts; SentencePiece and the dictionary learn from the
    # manifest once, not from the copies.
    encoder = TextEncoder(
        Dictionary.load(perturbed / "dict.target.txt"),
        (perturbed / "spm_target.model").read_bytes(),
    )
    targets = MMapIndexedDataset(perturbed / "train.target")
    assert [encoder.decode(targets[i]) for i in range(len(targets))] == [
        u.src_text for u in utterances for _ in range(3)
    ]
    entry = info["splits"]["train"]
    assert entry["utterances"] == 3 * len(utterances) == len(ids)
    assert info["cmvn_frames"] == entry["frames"] == int(frames.sum())  # CMVN over all copies
    by_speed = entry["speed_perturb"]
    assert list(by_speed) == ["0.9", "1.0", "1.1"]
    assert all(by_speed[s]["utterances"] == len(utterances) for s in by_speed)
    hours = sum(u.n_samples for u in utterances) / 16000 / 3600
    assert by_speed["1.0"]["hours"] == pytest.approx(hours, abs=1e-6)
    assert by_speed["0.9"]["hours"] == pytest.approx(hours / 0.9, abs=1e-5)
    assert by_speed["1.1"]["hours"] == pytest.approx(hours / 1.1, abs=1e-5)
    assert entry["hours"] == pytest.approx(sum(s["hours"] for s in by_speed.values()), abs=1e-5)
    # Validation and test data are not perturbed: the same bytes as without speed_perturb.
    original = folder_bytes(built)
    for name, content in folder_bytes(perturbed).items():
        if not name.startswith("train.") and name != "global_cmvn.npz":
            assert content == original[name], name
    assert "speed_perturb" not in info["splits"]["valid"]
    assert not (perturbed / "valid.speed.txt").exists()


def test_speed_perturbed_output_is_byte_identical_for_any_worker_count(
    corpus: Path, perturbed: Path, tmp_path: Path
) -> None:
    other = tmp_path / "asr_sp"
    settings = exact_command(corpus, other)
    cli_main([*settings[:-1], "workers=1", PIECES, "shard_size=7", "speed_perturb=[0.9,1,1.1]"])
    assert folder_bytes(other) == folder_bytes(perturbed)
    stable = [stable_json(other), stable_json(perturbed)]
    for manifest in stable:
        manifest["config"].pop("speed_perturb")  # as typed; the factors are the same
    assert stable[0] == stable[1]


def test_speed_perturb_is_fingerprinted_only_when_it_changes_the_output() -> None:
    def fingerprint(**settings: Any) -> str:
        return speech._fingerprint(speech.SpeechPreprocessConfig(**settings), {}, {})

    assert fingerprint() == fingerprint(speed_perturb=[1.0])
    assert fingerprint(speed_perturb=[0.9, 1.0]) == fingerprint(speed_perturb=[1.0, 0.9])
    assert fingerprint() != fingerprint(speed_perturb=[0.9, 1.0])
    assert fingerprint(speed_perturb=[0.9, 1.0]) != fingerprint(speed_perturb=[0.8, 1.0])


@pytest.mark.parametrize(
    ("factors", "problem"),
    [
        ("[0.9,0,1.1]", "speed_perturb=[0.9,0.0,1.1]: factor 0.0 is not in (0, 2]"),
        ("[0.9,2.5]", "speed_perturb=[0.9,2.5]: factor 2.5 is not in (0, 2]"),
        ("[0.9,1.0,0.9]", "speed_perturb=[0.9,1.0,0.9]: factor 0.9 is given twice"),
        ("[]", "speed_perturb=[]: give at least one factor"),
    ],
)
def test_bad_speed_factors_are_refused(
    factors: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = run_failing(
        capsys,
        "task=speech_to_text",
        f"train={tmp_path / 'train.tsv'}",
        "target=src_text",
        f"destdir={tmp_path / 'out'}",
        f"speed_perturb={factors}",
    )
    assert problem in error
    assert not (tmp_path / "out").exists()


def test_a_copy_id_taken_by_another_utterance_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = small_corpus(tmp_path / "corpus")
    edit_line(manifest, 4, id="train_0001_sp1.1")
    error = run_failing(
        capsys,
        "task=speech_to_text",
        f"train={manifest}",
        "target=src_text",
        f"destdir={tmp_path / 'out'}",
        "bpe=char",
        "speed_perturb=[0.9,1.0,1.1]",
    )
    assert error.endswith(
        f"{manifest}:4: column id: 'train_0001_sp1.1' is also the id of the speed 1.1 copy of "
        "'train_0001' (line 2) that speed_perturb adds; rename the utterance"
    )


# ---- bad input -----------------------------------------------------------------------------
def small_corpus(folder: Path) -> Path:
    write_speech_corpus(folder, {"train": 6}, seed=3)
    return folder / "train.tsv"


def edit_line(manifest: Path, line: int, **columns: str) -> None:
    lines = manifest.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    fields = lines[line - 1].split("\t")
    for name, value in columns.items():
        fields[header.index(name)] = value
    lines[line - 1] = "\t".join(fields)
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")


def audio_of(manifest: Path, line: int) -> Path:
    return read_manifest(manifest)[line - 2].audio


def replace_audio(manifest: Path, line: int, samples: np.ndarray, rate: int = 16000, **kw) -> None:
    path = audio_of(manifest, line)
    soundfile.write(path.with_suffix(".wav"), samples, rate, **kw)
    edit_line(manifest, line, audio=f"audio/{path.stem}.wav", n_samples=str(len(samples)))


def spoil_missing(manifest: Path) -> str:
    audio_of(manifest, 3).unlink()
    return "column audio: .*train_0002.flac: audio file not found"


def spoil_corrupt(manifest: Path) -> str:
    audio_of(manifest, 3).write_bytes(b"\x00garbage" * 50)
    return r"column audio: .*train_0002.flac: cannot read audio \(.+\)"


def spoil_n_samples(manifest: Path) -> str:
    edit_line(manifest, 3, n_samples="123")
    return r"column n_samples: 123, but .*train_0002.flac has \d+ samples"


def spoil_rate(manifest: Path) -> str:
    replace_audio(manifest, 3, np.zeros(4000, np.float32) + 0.1, rate=8000)
    return "column audio: .*train_0002.wav: sample rate 8000 Hz, expected 16000 Hz"


def spoil_short(manifest: Path) -> str:
    replace_audio(manifest, 3, np.full(160, 0.1, np.float32))
    return "column audio: .*train_0002.wav: 10.0 ms of audio, shorter than min_duration_ms=25"


def spoil_empty_audio(manifest: Path) -> str:
    replace_audio(manifest, 3, np.zeros(0, np.float32))
    return "column audio: .*train_0002.wav: zero-length audio"


def spoil_nan(manifest: Path) -> str:
    samples = np.full(1600, 0.1, np.float32)
    samples[5] = np.inf
    replace_audio(manifest, 3, samples, subtype="FLOAT")
    return "column audio: .*train_0002.wav: audio contains NaN or infinite samples"


def spoil_text(manifest: Path) -> str:
    edit_line(manifest, 3, src_text=" ")
    return r"column src_text: empty text \(utterance train_0002"


def spoil_length(manifest: Path) -> str:
    replace_audio(manifest, 3, np.full(32000, 0.1, np.float32))
    return (
        r"column audio: .*train_0002.wav: 198 frames \(2.0 s\), more than max_source_positions=150"
    )


@pytest.mark.parametrize(
    "spoil",
    [
        spoil_missing,
        spoil_corrupt,
        spoil_n_samples,
        spoil_rate,
        spoil_short,
        spoil_empty_audio,
        spoil_nan,
        spoil_text,
        spoil_length,
    ],
)
def test_bad_utterances_are_one_line_errors(
    spoil: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = small_corpus(tmp_path / "corpus")
    longest = max(num_frames(u.n_samples, FeatureConfig()) for u in read_manifest(manifest))
    assert longest < 150  # only spoil_length's utterance is longer
    message = spoil(manifest)
    destdir = tmp_path / "out"
    error = run_failing(
        capsys,
        "task=speech_to_text",
        f"train={manifest}",
        "target=src_text",
        f"destdir={destdir}",
        "bpe=char",
        "resample=false",
        "max_source_positions=150",
    )
    assert re.search(f"error: {re.escape(str(manifest))}:3: {message}", error), error
    assert error.endswith("; fix it or pass skip_bad_audio=true to skip such utterances")
    assert not destdir.exists()


def test_manifest_mistakes_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = small_corpus(tmp_path / "corpus")
    lines = manifest.read_text(encoding="utf-8").splitlines()
    manifest.write_text("\n".join([*lines, lines[2]]) + "\n", encoding="utf-8")
    error = run_failing(
        capsys, "task=speech_to_text", f"train={manifest}", "target=src_text", "bpe=char"
    )
    assert error.endswith(f"{manifest}:8: column id: duplicate id 'train_0002' (first on line 3)")


def test_skip_bad_audio_counts_by_reason(tmp_path: Path) -> None:
    manifest = small_corpus(tmp_path / "corpus")
    spoil_missing(manifest)  # line 3
    audio = audio_of(manifest, 4)
    edit_line(manifest, 4, src_text="")
    stereo, _ = soundfile.read(audio_of(manifest, 5), dtype="float32")
    replace_audio(manifest, 5, np.stack([stereo, stereo], axis=1))
    mono, _ = soundfile.read(audio_of(manifest, 6), dtype="float32")
    replace_audio(manifest, 6, mono[::2].copy(), rate=8000)
    # The target of line 7 is far too long for its audio: kept, counted as CTC-infeasible.
    edit_line(manifest, 7, src_text=" ".join(["red"] * 40))
    destdir = tmp_path / "out"
    cli_main(
        [
            "task=speech_to_text",
            f"train={manifest}",
            "target=src_text",
            f"destdir={destdir}",
            "bpe=char",
            "skip_bad_audio=true",
        ]
    )
    entry = manifest_of(destdir)["splits"]["train"]
    assert audio.exists()
    assert entry["skipped"] == {"empty_text": 1, "missing_audio": 1}
    assert entry["skipped_ids"] == ["train_0002", "train_0003"]
    assert entry["utterances"] == 4 and entry["downmixed"] == 1 and entry["resampled"] == 1
    assert entry["ctc_infeasible"] == 1 and entry["ctc_infeasible_ids"] == ["train_0006"]
    ids = (destdir / "train.ids.txt").read_text(encoding="utf-8").split()
    assert ids == ["train_0001", "train_0004", "train_0005", "train_0006"]


def test_ctc_feasibility_counts_repeated_tokens() -> None:
    # 4 tokens, one adjacent repeat: CTC needs 5 frames; 17 frames subsample to 5, 16 to 4.
    flat = np.array([5, 6, 6, 7, 2, 5, 6, 6, 7, 2])
    sizes = np.array([5, 5])
    assert speech._ctc_infeasible(flat, sizes, np.array([17, 16])).tolist() == [False, True]


# ---- command line --------------------------------------------------------------------------
def test_unknown_task_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    error = run_failing(capsys, "task=speach", "train=x")
    assert error == (
        "nmtkit-preprocess: error: task=speach: unknown preprocessing task "
        "(known: speech_to_text, translation)"
    )


def test_config_mistakes_are_collected(capsys: pytest.CaptureFixture[str]) -> None:
    error = run_failing(capsys, "task=speech_to_text", "target=text", "workers=0", "bpe=bpe")
    assert "train: required" in error and "target=text: must be src_text" in error
    assert "workers=0: must be >= 1" in error and "bpe=bpe: must be one of" in error


def test_help_shows_the_speech_settings(capsys: pytest.CaptureFixture[str]) -> None:
    cli_main(["task=speech_to_text", "--help"])
    shown = capsys.readouterr().out
    assert "  max_source_positions=6000    # Utterances with more feature frames" in shown
    assert "\n  trainpref=" not in shown  # the text settings belong to task=translation
