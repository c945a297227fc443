"""Bad paths around data: preprocess outputs (wrong kind of path, read-only, full disk),
SIGTERM during preprocessing, and data directories that are corrupt or lack a split.

Each must end as one line naming the setting or file, a non-zero exit, and nothing
half-written that looks finished.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import pool as pool_module
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nmtkit.data import indexed_dataset
from nmtkit.data.indexed_dataset import IndexedDatasetBuilder, MMapIndexedDataset
from nmtkit.errors import DataError
from nmtkit.preprocess import feature_shards, staging, subwords
from nmtkit.preprocess.termination import (
    SIGTERM_EXIT_STATUS,
    Terminated,
    must_wait,
    sigterm_raises_terminated,
)
from nmtkit.tasks.speech_to_text import SpeechToTextConfig, SpeechToTextTask
from nmtkit.tasks.translation import TranslationConfig, TranslationTask
from nmtkit_cli.preprocess import cli_main
from tests.speech_corpus import write_speech_corpus

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
PROGRAM = "nmtkit-preprocess"


def write_pairs(folder: Path, split: str, pairs: int, seed: int = 1) -> None:
    """folder/<split>.{de,en}: word sequences and their upper-cased copies."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) for _ in range(pairs)]
    (folder / f"{split}.de").write_text("".join(f"{line}\n" for line in lines))
    (folder / f"{split}.en").write_text("".join(f"{line.upper()}\n" for line in lines))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    write_pairs(tmp_path / "raw", "train", 60)
    write_pairs(tmp_path / "raw", "valid", 8, seed=2)
    return tmp_path / "raw"


def text_settings(raw: Path, destdir: Path, *more: str) -> list[str]:
    return [
        "source_lang=de",
        "target_lang=en",
        f"trainpref={raw / 'train'}",
        f"validpref={raw / 'valid'}",
        f"destdir={destdir}",
        "bpe=none",
        *more,
    ]


def run_failing(capsys: pytest.CaptureFixture[str], settings: list[str], status: int = 1) -> str:
    """Runs the CLI expecting a clean failure; returns its one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(settings)
    assert exit_info.value.code == status
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"{PROGRAM}: ")
    assert "\n" not in error and "Traceback" not in error
    return error


def hidden_folders(folder: Path) -> list[str]:
    """Staging or write-test folders a run left beside destdir."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# ---- output paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["translation", "speech_to_text"])
def test_destdir_that_is_a_file_fails_before_the_inputs_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str
) -> None:
    destdir = tmp_path / "bin"
    destdir.write_text("not a folder")
    # The inputs do not exist either: the output is checked first, before any work.
    if task == "translation":
        settings = text_settings(tmp_path / "nowhere", destdir)
    else:
        settings = [f"task={task}", f"train={tmp_path / 'no.tsv'}", "target=src_text"]
        settings.append(f"destdir={destdir}")
    error = run_failing(capsys, settings)
    assert error == f"{PROGRAM}: error: destdir={destdir}: is a file, not a directory"
    assert destdir.read_text() == "not a folder"


def test_destdir_below_a_file_is_named(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    error = run_failing(capsys, text_settings(raw, blocker / "bin"))
    assert error == (
        f"{PROGRAM}: error: destdir={blocker / 'bin'}: {blocker} is a file, not a directory"
    )
    error = run_failing(capsys, text_settings(raw, blocker / "deeper" / "bin"))
    assert error.startswith(f"{PROGRAM}: error: destdir={blocker / 'deeper' / 'bin'}: ")
    assert "a path component is a file, not a directory" in error


def test_read_only_parent_is_named_before_any_work(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    real_mkdtemp = staging.tempfile.mkdtemp

    def read_only_mkdtemp(*args: Any, **kwargs: Any) -> str:
        if Path(kwargs.get("dir", "")) == parent:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(parent / ".probe"))
        return real_mkdtemp(*args, **kwargs)

    # Root ignores permission bits, so the read-only file system is simulated.
    monkeypatch.setattr(staging.tempfile, "mkdtemp", read_only_mkdtemp)
    error = run_failing(capsys, text_settings(raw, parent / "bin"))
    assert error == (
        f"{PROGRAM}: error: destdir={parent / 'bin'}: cannot write in {parent} "
        "(read-only file system)"
    )
    assert list(parent.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_by_permissions(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o555)
    try:
        error = run_failing(capsys, text_settings(raw, parent / "bin"))
    finally:
        parent.chmod(0o755)
    assert error == (
        f"{PROGRAM}: error: destdir={parent / 'bin'}: cannot write in {parent} (permission denied)"
    )


def test_missing_parent_is_created(raw: Path, tmp_path: Path) -> None:
    destdir = tmp_path / "new" / "deeper" / "bin"
    cli_main(text_settings(raw, destdir))
    assert (destdir / "preprocess.json").is_file()
    assert hidden_folders(destdir.parent) == []


# ---- full disk --------------------------------------------------------------------------------
def test_full_disk_during_sentencepiece_training_says_so(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def sentencepiece_on_a_full_disk(**kwargs: Any) -> None:
        # What SentencePiece 0.2 raises when the disk fills up while it writes its model.
        raise RuntimeError(
            'INTERNAL: src/trainer_interface.cc(783) [output->WriteLine(absl::StrCat(piece.piece(), "\\t", piece.score()))]'
        )

    real_statvfs = os.statvfs

    def no_free_blocks_under_out(path: Any) -> Any:
        stats = real_statvfs(path)
        if not Path(path).is_relative_to(out):
            return stats
        values = list(stats)
        values[4] = 0  # f_bavail
        return os.statvfs_result(values)

    monkeypatch.setattr(
        subwords.sentencepiece.SentencePieceTrainer, "train", sentencepiece_on_a_full_disk
    )
    monkeypatch.setattr(os, "statvfs", no_free_blocks_under_out)
    settings = [*text_settings(raw, out / "bin"), "bpe=sentencepiece", "joined_dictionary=true"]
    error = run_failing(capsys, settings)
    assert error == (
        f"{PROGRAM}: error: destdir={out / 'bin'}: no space left on device at {out / 'bin'} "
        "(writing spm.model)"
    )
    assert list(out.iterdir()) == []  # no staging folder, no destdir


def test_sentencepiece_errors_on_a_disk_with_room_are_not_called_full(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_sentencepiece(**kwargs: Any) -> None:
        raise RuntimeError("INTERNAL: something else went wrong")

    monkeypatch.setattr(subwords.sentencepiece.SentencePieceTrainer, "train", failing_sentencepiece)
    settings = [*text_settings(raw, tmp_path / "bin"), "bpe=sentencepiece"]
    error = run_failing(capsys, settings)
    assert "SentencePiece training on" in error and "something else went wrong" in error
    assert "no space" not in error


class FullDiskFile:
    """A .bin file on a disk that is full: every write fails as write(2) does, without a
    file name in the error."""

    def __init__(self, path: Any) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close(), as the builder does)

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.file.close()


def test_full_disk_while_binarizing_names_the_file_and_cleans_up(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def open_on_full_disk(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith(".bin") and "w" in mode:
            return FullDiskFile(path)
        return open(path, mode, *args, **kwargs)

    # Only the indexed-dataset writer sees the full disk (its module's `open`).
    monkeypatch.setattr(indexed_dataset, "open", open_on_full_disk, raising=False)
    out = tmp_path / "out"
    error = run_failing(capsys, text_settings(raw, out / "bin"))
    assert error == (
        f"{PROGRAM}: error: destdir={out / 'bin'}: no space left on device at {out / 'bin'} "
        "(writing train.de-en.de.bin)"
    )
    assert list(out.iterdir()) == []


# ---- SIGTERM ----------------------------------------------------------------------------------
def preprocess_command() -> list[str]:
    script = Path(sys.executable).with_name(PROGRAM)
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nmtkit_cli.preprocess"]


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (forked workers keep their parent's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.append(int(entry.name))
    return found


def wait_for(condition: Any, timeout: float, process: subprocess.Popen[str]) -> bool:
    """Polls `condition()` until it holds, the process ends or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_sigterm_removes_the_staging_folder_and_stops_the_workers(tmp_path: Path) -> None:
    # Enough text that counting and binarizing with two workers outlast the poll by far.
    write_pairs(tmp_path / "raw", "train", 40_000)
    out = tmp_path / "out"
    destdir = out / "bin"
    process = subprocess.Popen(
        [
            *preprocess_command(),
            "source_lang=de",
            "target_lang=en",
            f"trainpref={tmp_path / 'raw' / 'train'}",
            f"destdir={destdir}",
            "bpe=none",
            "workers=2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = wait_for(lambda: out.is_dir() and hidden_folders(out), 60, process)
        assert started, "the staging folder never appeared"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == SIGTERM_EXIT_STATUS, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"{PROGRAM}: terminated (SIGTERM); destdir={destdir} not written"
    )
    assert list(out.iterdir()) == []
    assert processes_mentioning(f"destdir={destdir}") == []


def exit_status_of_fork(child: Any) -> int:
    """Runs `child()` in a forked process; its exit code (-N when signal N ended it)."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        except BaseException:
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def signal_yourself() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # not reached: the signal ends the process


def signal_yourself_twice() -> None:
    with sigterm_raises_terminated():
        try:
            signal_yourself()
        except Terminated:
            signal_yourself()  # a second SIGTERM during the cleanup ends the process


def sigterm_state() -> None:
    default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    unblocked = signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    os._exit(0 if default and unblocked else 1)


def test_forked_workers_get_the_default_sigterm_action() -> None:
    # Every pool ends with Pool.terminate(), a SIGTERM to each forked worker. Python's
    # handler in a worker would raise the main process's exception there (a traceback), or
    # forget a SIGTERM that came while Python set the worker up (a worker that waits forever).
    with sigterm_raises_terminated():
        assert exit_status_of_fork(sigterm_state) == 0
        assert exit_status_of_fork(signal_yourself) == -signal.SIGTERM
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_second_sigterm_ends_the_process_at_once() -> None:
    assert exit_status_of_fork(signal_yourself_twice) == -signal.SIGTERM


def judge_the_main_thread_once_it_waits_for_a_result() -> bool:
    """Run in a pool's thread: must_wait() on the main thread while it waits in AsyncResult."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frame = sys._current_frames()[threading.main_thread().ident]
        if frame.f_code.co_name == "wait" and frame.f_back.f_code.co_name == "wait":
            return must_wait(frame)  # threading.Event.wait called by ApplyResult.wait
        time.sleep(0.001)
    raise AssertionError("the main thread never waited for the result")


def judged_inside_multiprocessing(outside: int) -> bool:
    # mapstar (multiprocessing/pool.py) calls map(), which calls the lambda.
    return pool_module.mapstar((lambda _: must_wait(sys._getframe(), outside), [0]))[0]


def test_sigterm_waits_while_multiprocessing_does_its_bookkeeping() -> None:
    # Raised inside multiprocessing's own code (seen: a Pool starting its threads), the
    # exception left a pool whose thread went on starting workers after the process had gone;
    # raised while the main thread waits for a result, it is safe (and prompt).
    with ThreadPool(1) as pool:
        assert pool.apply(judge_the_main_thread_once_it_waits_for_a_result) is False
    assert judged_inside_multiprocessing(outside=0) is True
    assert judged_inside_multiprocessing(outside=1) is False  # the block runs inside it
    assert must_wait(sys._getframe()) is False


def do_nothing() -> None:
    """A Python call: where the interpreter runs pending signal handlers."""


class SignalledWhileCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        do_nothing()  # the handler runs here, inside __del__, where Python drops exceptions


def test_sigterm_dropped_inside_a_callback_is_delivered_again() -> None:
    # Seen for real: SIGTERM during logging's at-fork hook was dropped and the run went on.
    with pytest.raises(Terminated), sigterm_raises_terminated():
        SignalledWhileCollected()
        time.sleep(5)  # cut short by the signal delivered again (a millisecond later)


def test_sigterm_in_process_cleans_up_as_ctrl_c_does(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def terminated_while_binarizing(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(
        "nmtkit.preprocess.text.binarize_parallel_text", terminated_while_binarizing
    )
    out = tmp_path / "out"
    previous = signal.getsignal(signal.SIGTERM)
    error = run_failing(capsys, text_settings(raw, out / "bin"), status=SIGTERM_EXIT_STATUS)
    assert error == f"{PROGRAM}: terminated (SIGTERM); destdir={out / 'bin'} not written"
    assert list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is previous


# ---- speech: SIGTERM keeps finished shards, as Ctrl-C does --------------------------------------
@pytest.fixture(scope="module")
def speech_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_speech_corpus(tmp_path_factory.mktemp("speech"), {"train": 12, "valid": 4})


def speech_settings(corpus: dict[str, Path], destdir: Path, *more: str) -> list[str]:
    return [
        "task=speech_to_text",
        f"train={corpus['train']}",
        f"valid={corpus['valid']}",
        "target=src_text",
        "bpe=char",
        f"destdir={destdir}",
        *more,
    ]


def test_sigterm_during_speech_extraction_keeps_the_finished_shards(
    speech_corpus: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_extract = feature_shards.extract_shard
    calls: list[Path] = []

    def terminated_on_third_shard(job: feature_shards.ShardJob) -> Path:
        calls.append(job.path)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_extract(job)

    monkeypatch.setattr(feature_shards, "extract_shard", terminated_on_third_shard)
    destdir = tmp_path / "asr"
    settings = speech_settings(speech_corpus, destdir, "shard_size=4")
    error = run_failing(capsys, settings, status=SIGTERM_EXIT_STATUS)
    assert error == f"{PROGRAM}: terminated (SIGTERM); destdir={destdir} not written"
    assert not destdir.exists()
    (partial,) = tmp_path.glob(".asr.partial-*")
    assert sorted(p.name for p in (partial / "shards").glob("*.npz")) == sorted(
        p.name for p in calls[:2]
    )
    monkeypatch.setattr(feature_shards, "extract_shard", real_extract)
    cli_main(settings)  # resumes
    assert (destdir / "preprocess.json").is_file()
    assert hidden_folders(tmp_path) == []


# ---- corrupt data directories -----------------------------------------------------------------
@pytest.fixture
def text_data(raw: Path, tmp_path: Path) -> Path:
    destdir = tmp_path / "bin"
    cli_main(text_settings(raw, destdir))
    return destdir


def translation_task(data: Path) -> TranslationTask:
    return TranslationTask(TranslationConfig(data=str(data)))


def set_token(path: Path, position: int, value: int, dtype: Any = np.uint16) -> None:
    data = np.fromfile(path, dtype=dtype)
    data[position] = value
    data.tofile(path)


@pytest.mark.parametrize("lang", ["de", "en"])
def test_token_id_beyond_the_dictionary_names_the_file(text_data: Path, lang: str) -> None:
    task = translation_task(text_data)
    dictionary_size = len(task.src_dict if lang == "de" else task.tgt_dict)
    first_item = MMapIndexedDataset(text_data / f"train.de-en.{lang}")[0].size
    bin_file = text_data / f"train.de-en.{lang}.bin"
    set_token(bin_file, first_item + 1, 65000)  # in item 1
    with pytest.raises(DataError) as error:
        task.load_dataset("train")
    assert str(error.value) == (
        f"{bin_file}: token id 65000 in item 1 is outside {text_data / f'dict.{lang}.txt'} "
        f"({dictionary_size} entries, ids 0-{dictionary_size - 1}); the file is corrupt or "
        "was binarized with another dictionary"
    )
    task.load_dataset("valid")  # other splits still load


def test_negative_token_id_is_refused(tmp_path: Path) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "signed", np.int32)
    builder.add_item([4, 5, 2])
    builder.add_item([6, -3, 2])
    builder.finalize()
    with pytest.raises(DataError, match=r"signed\.bin: token id -3 in item 1 is outside dict"):
        MMapIndexedDataset(tmp_path / "signed").check_token_ids(8, "dict.txt")


def test_index_of_another_dataset_is_refused(text_data: Path) -> None:
    # valid's .bin with train's .idx: the index needs more bytes than the file has.
    valid_bin = text_data / "valid.de-en.en.bin"
    valid_bin.write_bytes((text_data / "valid.de-en.de.bin").read_bytes()[:4])
    with pytest.raises(DataError) as error:
        translation_task(text_data).load_dataset("valid")
    assert str(error.value).startswith(f"{valid_bin}: 4 bytes, but ")
    assert "not from the same dataset" in str(error.value)


def test_sides_of_different_lengths_are_refused(text_data: Path) -> None:
    for suffix in (".bin", ".idx"):
        (text_data / f"valid.de-en.en{suffix}").write_bytes(
            (text_data / f"train.de-en.en{suffix}").read_bytes()
        )
    with pytest.raises(DataError, match=r"valid\.de-en\.de\.idx has 8 sentences but .* has 60"):
        translation_task(text_data).load_dataset("valid")


def test_corrupt_index_sizes_are_refused(tmp_path: Path) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "data", np.uint16)
    builder.add_item([4, 2])
    builder.finalize()
    index = tmp_path / "data.idx"
    raw_index = bytearray(index.read_bytes())
    raw_index[indexed_dataset.HEADER.size : indexed_dataset.HEADER.size + 4] = np.array(
        [-1], dtype=np.int32
    ).tobytes()
    index.write_bytes(bytes(raw_index))
    with pytest.raises(DataError, match="negative item sizes or offsets"):
        MMapIndexedDataset(tmp_path / "data")


# ---- missing splits ---------------------------------------------------------------------------
def test_missing_split_names_the_directory_and_files(text_data: Path) -> None:
    task = translation_task(text_data)
    with pytest.raises(DataError) as error:
        task.load_dataset("test")
    assert str(error.value) == (
        f"{text_data}: no split 'test' for de-en (missing test.de-en.de.bin, test.de-en.de.idx, "
        "test.de-en.en.bin, test.de-en.en.idx); splits present: train, valid"
    )
    (text_data / "valid.de-en.en.idx").unlink()
    with pytest.raises(DataError) as error:
        task.load_dataset("valid")
    assert "no split 'valid' for de-en (missing valid.de-en.en.idx)" in str(error.value)


@pytest.fixture(scope="module")
def speech_data(speech_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    destdir = tmp_path_factory.mktemp("speech-bin") / "asr"
    cli_main(speech_settings(speech_corpus, destdir))
    return destdir


@pytest.fixture
def speech_copy(speech_data: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the speech data directory that a test may spoil."""
    copy = tmp_path / "asr"
    copy.mkdir()
    for path in speech_data.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    yield copy


def test_speech_missing_split_and_corrupt_targets(speech_copy: Path) -> None:
    task = SpeechToTextTask(SpeechToTextConfig(data=str(speech_copy)))
    with pytest.raises(DataError) as error:
        task.load_dataset("test")
    assert str(error.value) == (
        f"{speech_copy}: no split 'test' (missing test.fbank.bin, test.fbank.idx, "
        "test.target.bin, test.target.idx); splits present: train, valid"
    )
    set_token(speech_copy / "valid.target.bin", 0, 60000)
    with pytest.raises(DataError) as error:
        task.load_dataset("valid")
    assert str(error.value).startswith(
        f"{speech_copy / 'valid.target.bin'}: token id 60000 in item 0 is outside "
        f"{speech_copy / 'dict.target.txt'} ({len(task.tgt_dict)} entries"
    )
    assert len(task.load_dataset("train")) == 12
