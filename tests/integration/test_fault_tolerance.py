"""Fault tolerance of training: kill -9 at three points, SIGTERM preemption, a failing rank,
DDP/FSDP equivalence and cross-strategy resume, and the refusals of a bad resume."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_generate import run_cli, train_args, train_log

from nmtkit.checkpoint import load_checkpoint, save_checkpoint, strip_training_state
from nmtkit.preemption import PREEMPTED_EXIT_CODE, StopSignals
from nmtkit_cli.generate import cli_main as generate_cli
from nmtkit_cli.train import cli_main as train_cli

FAULT_DRIVER = Path(__file__).with_name("train_with_fault.py")
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
QUICK = ("dataset.max_tokens=300", "dataset.disable_validation=true")


def losses(save_dir: Path) -> list[tuple[int, float, float]]:
    return [(r["update"], r["loss"], r["gnorm"]) for r in train_log(save_dir)]


def run_with_fault(point: str, n: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FAULT_DRIVER), point, str(n), *args],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip


def run_train(args: list[str]) -> None:
    """A training in a subprocess: the same thread settings as the faulty runs, so the float
    results can be compared exactly."""
    result = subprocess.run([sys.executable, "-m", "nmtkit_cli.train", *args],
                            capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_kill_9_at_three_points_then_resume_matches_an_uninterrupted_run(
    data_dir: Path, tmp_path: Path
) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    common = (*QUICK, "checkpoint.save_interval_updates=4", "optimization.max_update=12")
    run_train(train_args(data_dir, straight, *common))
    args = train_args(data_dir, killed, *common)
    # Mid-update 6 (checkpoint at 4 exists); then during the write of the update-8
    # checkpoint (temporary file complete, not yet renamed); then right after that write.
    for point, n in (("mid_update", 6), ("checkpoint_write", 1), ("after_checkpoint", 1)):
        result = run_with_fault(point, n, args)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
        for checkpoint in killed.glob("checkpoint*.pt"):
            load_checkpoint(checkpoint)  # every file that looks finished is complete
    run_train(args)
    assert losses(killed) == losses(straight)  # identical, and no update logged twice
    assert not list(killed.glob(".*.tmp")) and not (killed / "train.lock").exists()
    assert (
        load_checkpoint(killed / "checkpoint_last.pt")["training_state"]["progress"]["num_updates"]
        == 12
    )


def test_sigterm_saves_at_the_current_update_and_resumes_exactly(
    data_dir: Path, tmp_path: Path
) -> None:
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    process = subprocess.Popen(
        [sys.executable, "-m", "nmtkit_cli.train",
         *train_args(data_dir, stopped, *QUICK, "optimization.max_update=100000")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    log = stopped / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count('"kind": "train"') >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr[-2000:]
    assert "received SIGTERM" in stderr and "Traceback" not in stderr
    status = json.loads((stopped / "run_status.json").read_text())
    assert status["status"] == "stopped" and status["reason"] == "received SIGTERM"
    saved = load_checkpoint(stopped / "checkpoint_last.pt")["training_state"]["progress"]
    logged = losses(stopped)
    assert saved["num_updates"] == logged[-1][0] >= 3  # the update the signal interrupted
    target = saved["num_updates"] + 3
    run_train(train_args(data_dir, stopped, *QUICK, f"optimization.max_update={target}"))
    run_train(train_args(data_dir, straight, *QUICK, f"optimization.max_update={target}"))
    assert losses(stopped) == losses(straight)


def test_a_second_signal_stops_at_once() -> None:
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received == "SIGUSR1"
        with pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def torchrun(args: list[str], driver: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    program = driver or ["-m", "nmtkit_cli.train"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *program, *args, "common.device=cpu"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip


def parameters(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_parameters(a: Path, b: Path) -> None:
    left, right = parameters(a), parameters(b)
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_and_fsdp_match_one_process_and_resume_across_strategies(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 ranks x update_freq=1 == 1 process x update_freq=2 (same batches: batch j goes to
    rank j % 2), for DDP and FSDP; an FSDP checkpoint generates, resumes in one process, and
    resumes exactly under DDP."""
    # SGD with momentum (optimizer state to resume): Adam would turn float noise in the
    # gradients of key biases, which are zero in exact arithmetic, into lr-sized steps.
    common = (*QUICK, "model.dropout=0", "checkpoint.save_interval_updates=2",
              "dataset.required_batch_size_multiple=1", "optimizer=sgd", "optimizer.lr=0.5",
              "optimizer.momentum=0.9", "lr_scheduler=fixed")  # fmt: skip
    one, ddp, fsdp = tmp_path / "one", tmp_path / "ddp", tmp_path / "fsdp"
    train_cli(train_args(data_dir, one, *common, "optimization.update_freq=2",
                         "optimization.max_update=4"))  # fmt: skip
    result = torchrun(train_args(data_dir, ddp, *common, "optimization.max_update=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_parameters(one / "checkpoint_last.pt", ddp / "checkpoint_last.pt")

    result = torchrun(train_args(data_dir, fsdp, *common, "optimization.max_update=2",
                                 "distributed.strategy=fsdp"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_parameters(one / "checkpoint_1_2.pt", fsdp / "checkpoint_last.pt")
    source = tmp_path / "input.txt"
    source.write_text("alpha bravo\ncharlie delta echo\n")
    code, out, err = run_cli(
        generate_cli,
        [f"checkpoint={fsdp / 'checkpoint_last.pt'}", f"input={source}", "beam=2"],
        capsys,
    )
    assert code == 0 and len(out.splitlines()) == 2, err
    # The FSDP checkpoint resumes in a single process (other batches: the world size changed)...
    single = tmp_path / "single"
    shutil.copytree(fsdp, single)
    train_cli(train_args(data_dir, single, *common, "optimization.max_update=3"))
    assert [r[0] for r in losses(single)] == [1, 2, 3]
    # ... and exactly under DDP with the same world size.
    result = torchrun(train_args(data_dir, fsdp, *common, "optimization.max_update=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_parameters(one / "checkpoint_last.pt", fsdp / "checkpoint_last.pt")
    for sharded, replicated in zip(losses(fsdp), losses(ddp), strict=True):
        assert sharded == pytest.approx(replicated, rel=1e-5)  # norms summed in another order


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_epoch_end_with_a_padding_batch(data_dir: Path, tmp_path: Path) -> None:
    """13 batches over 2 ranks: rank 1's last batch only pads its shard. Its statistics
    (zeros) must have the layout of the others, or the all-reduce breaks (it did)."""
    save_dir = tmp_path / "ddp"
    result = torchrun(train_args(data_dir, save_dir, "dataset.max_tokens=350",
                                 "dataset.disable_validation=true", "optimization.max_epoch=1"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["update"] for r in train_log(save_dir)] == list(range(1, 8))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_a_rank_that_raises_stops_every_rank(data_dir: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    result = torchrun(
        train_args(data_dir, tmp_path / "run", *QUICK, "optimization.max_update=50",
                   "distributed.timeout_minutes=1"),
        driver=[str(FAULT_DRIVER), "raise_on_rank1", "2"],
    )  # fmt: skip
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert "nmtkit-train: error: rank 0: lost the other ranks (Connection closed by peer" in (
        result.stderr
    )
    assert time.monotonic() - started < 120  # bounded: never the 30-minute default wait


def test_out_of_memory_is_one_line_or_skipped(data_dir: Path, tmp_path: Path) -> None:
    args = train_args(data_dir, tmp_path / "halt", *QUICK, "optimization.max_update=4")
    result = run_with_fault("oom", 2, args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "out of memory at update 2" in result.stderr and "skip_oom_batches" in result.stderr

    skip = tmp_path / "skip"
    args = train_args(data_dir, skip, *QUICK, "optimization.max_update=4",
                      "optimization.skip_oom_batches=true")  # fmt: skip
    result = run_with_fault("oom", 2, args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped update 2: out of memory" in result.stderr
    progress = load_checkpoint(skip / "checkpoint_last.pt")["training_state"]["progress"]
    assert progress["num_updates"] == 4 and progress["oom_skipped_updates"] == 1


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_out_of_memory_on_one_rank_skips_the_update_on_all(data_dir: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "ddp"
    result = torchrun(
        train_args(data_dir, save_dir, *QUICK, "optimization.max_update=3",
                   "optimization.skip_oom_batches=true"),
        driver=[str(FAULT_DRIVER), "oom", "2"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped update 2: out of memory on a rank" in result.stderr
    progress = load_checkpoint(save_dir / "checkpoint_last.pt")["training_state"]["progress"]
    assert progress["num_updates"] == 3 and progress["oom_skipped_updates"] == 1


def test_resume_refusals_name_the_key_and_touch_no_file(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_dir = tmp_path / "run"
    train_cli(train_args(data_dir, save_dir, *QUICK, "optimization.max_update=2"))
    capsys.readouterr()
    config_before = (save_dir / "config.yaml").read_bytes()
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, save_dir, *QUICK, "optimization.max_update=4", "optimizer=sgd"),
        capsys,
    )
    assert code == 1 and "optimizer=adam" in err and "reset_optimizer" in err
    assert err.count("\n") == 1 and (save_dir / "config.yaml").read_bytes() == config_before
    # reset_optimizer=true starts SGD afresh on the saved weights.
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, save_dir, *QUICK, "optimization.max_update=3", "optimizer=sgd",
                   "optimizer.lr=0.1", "checkpoint.reset_optimizer=true"),
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "resuming with changed settings" in err and "optimizer._name 'adam' -> 'sgd'" in err

    # An exported model where checkpoint_last.pt should be: no silent restart at update 0.
    exported = tmp_path / "exported"
    exported.mkdir()
    state = load_checkpoint(save_dir / "checkpoint_last.pt")
    save_checkpoint(strip_training_state(state), exported / "checkpoint_last.pt")
    code, _, err = run_cli(
        train_cli, train_args(data_dir, exported, *QUICK, "optimization.max_update=4"), capsys
    )
    assert code == 1 and "has no training state" in err and "finetune_from_model" in err

    # Changed data (other languages) is refused unless reset_dataloader=true.
    state["data_fingerprint"] = {**state["data_fingerprint"], "target_lang": "xx"}
    save_checkpoint(state, save_dir / "checkpoint_last.pt")
    code, _, err = run_cli(
        train_cli, train_args(data_dir, save_dir, *QUICK, "optimization.max_update=4",
                              "optimizer=sgd", "optimizer.lr=0.1"), capsys
    )  # fmt: skip
    assert code == 1 and "training data changed" in err and "reset_dataloader" in err


def test_checkpoint_integrity_lock_and_log(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_dir = tmp_path / "run"
    train_cli(train_args(data_dir, save_dir, *QUICK, "optimization.max_update=2"))
    capsys.readouterr()
    # Finished files get the umask's permissions, not the 0600 of temporary files.
    umask = os.umask(0)
    os.umask(umask)
    for written in ("checkpoint_last.pt", "config.yaml", "env.json", "run_status.json"):
        assert (save_dir / written).stat().st_mode & 0o777 == 0o666 & ~umask, written
    # A flipped byte inside a weight is detected, not trained on.
    path = save_dir / "checkpoint_last.pt"
    data = bytearray(path.read_bytes())
    raw = torch.load(path, weights_only=True)
    weight = next(t for t in raw["model"].values() if t.numel() > 64)
    needle = weight.reshape(-1)[:16].numpy().tobytes()
    offset = bytes(data).index(needle)
    data[offset + 3] ^= 0x40
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(data))
    code, _, err = run_cli(generate_cli, [f"checkpoint={corrupt}", "input=-"], capsys)
    assert code == 1 and "checksum mismatch" in err and str(corrupt) in err

    # A live run holds the lock; a dead one's lock is taken over with a message.
    lock = save_dir / "train.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    code, _, err = run_cli(
        train_cli, train_args(data_dir, save_dir, *QUICK, "optimization.max_update=3"), capsys
    )
    assert code == 1 and f"another training (pid {os.getpid()})" in err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    lock.write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename}))
    code, _, err = run_cli(
        train_cli, train_args(data_dir, save_dir, *QUICK, "optimization.max_update=3"), capsys
    )
    assert code == 0 and f"took over the stale lock of pid {dead}" in err
    assert not lock.exists()


def test_run_directory_problems_are_one_line(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for save_dir, expected in ((a_file, "is a file, not a directory"),
                               (a_file / "sub", "cannot write there")):  # fmt: skip
        code, _, err = run_cli(
            train_cli, train_args(data_dir, save_dir, *QUICK, "optimization.max_update=2"), capsys
        )
        assert code == 1 and f"checkpoint.save_dir={save_dir}" in err and expected in err
        assert err.count("\n") == 1

    # A disk that fills up while a checkpoint is written: one line, the last good one intact.
    save_dir = tmp_path / "run"
    train_cli(train_args(data_dir, save_dir, *QUICK, "optimization.max_update=2"))
    before = (save_dir / "checkpoint_last.pt").read_bytes()

    def full_disk(data: object, path: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("nmtkit.checkpoint.write_atomically", full_disk)
    capsys.readouterr()
    code, _, err = run_cli(
        train_cli, train_args(data_dir, save_dir, *QUICK, "optimization.max_update=4"), capsys
    )
    assert code == 1 and "no space left on device at" in err and "checkpoint_" in err
    assert err.strip().splitlines()[-1].startswith("nmtkit-train: error:")
    assert "Traceback" not in err
    assert (save_dir / "checkpoint_last.pt").read_bytes() == before
    assert not (save_dir / "train.lock").exists()


def test_experiment_id_status_and_duplicate_runs(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    train_cli(train_args(data_dir, first, *QUICK, "optimization.max_update=2"))
    env = json.loads((first / "env.json").read_text())
    status = json.loads((first / "run_status.json").read_text())
    assert len(env["experiment_id"]) == 16
    assert status["status"] == "finished" and status["reason"] == "reached max_update=2"
    capsys.readouterr()
    # The same experiment in another folder (paths and logging do not count): a warning...
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, second, *QUICK, "optimization.max_update=2", "common.log_interval=5"),
        capsys,
    )
    assert code == 0 and f"warning: {first} already finished this experiment" in err
    assert json.loads((second / "env.json").read_text())["experiment_id"] == env["experiment_id"]
    # ... or a refusal; another setting is another experiment.
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, tmp_path / "third", *QUICK, "optimization.max_update=2",
                   "checkpoint.refuse_duplicate=true"),
        capsys,
    )  # fmt: skip
    assert code == 1 and "already ran this experiment" in err
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, tmp_path / "fourth", *QUICK, "optimization.max_update=2",
                   "optimizer.lr=0.001", "checkpoint.refuse_duplicate=true"),
        capsys,
    )  # fmt: skip
    assert code == 0, err
    # A run that fails records why.
    code, _, err = run_cli(
        train_cli,
        train_args(data_dir, first, *QUICK, "optimization.max_update=4", "optimizer=sgd"),
        capsys,
    )
    assert code == 1  # refused before the run started: the old status stays
    assert json.loads((first / "run_status.json").read_text())["status"] == "finished"
