"""Speech training speed and peak memory: nmtkit-train against fairseq-train (S2T), side by side.

Both toolkits train the speech-to-text Transformer `s2t_transformer_xs` (conv subsampler, 6+3
layers, 256/1024, 4 heads, dropout 0.3; 10,137,856 parameters in both with 1,008 target
symbols) on the same features, the same target pieces and the same batch size in frames (and
batch-size multiple), with label smoothing 0.1, Adam (0.9, 0.98) lr 2e-3, inverse_sqrt warm-up
500, clip_norm 10, no SpecAugment, no CTC, no validation, no checkpoints, no loader workers and
the same number of threads. Runs alternate between the toolkits (the order flips every repeat)
so that a shared, noisy machine slows both alike; the table reports every run, the medians and
their ratio.

    python benchmarks/s2t_train_speed.py --speech ../shared/data/speech \\
        --nmtkit-data DATA --updates 30 --warmup 5 --repeats 2 \\
        --max-tokens 20000 --threads 2

Same inputs. The nmtkit data directory comes from `nmtkit-preprocess task=speech_to_text ...
target=src_text bpe_vocab_size=1000` (made from --speech when --nmtkit-data does not exist).
fairseq's inputs are exported from it, so both read identical numbers: every training utterance's
stored float16 filterbank is written as a float32 `.npy` (fairseq's format), the manifest
(id audio n_frames tgt_text speaker) carries each target already as its SentencePiece pieces
(nmtkit's binarized ids mapped back through nmtkit's dictionary, without the final </s> that
fairseq appends), `dict.txt` is nmtkit's target dictionary (same 1,008 entries, same ids), and
config.yaml has no bpe_tokenizer (pieces are split on spaces) and one feature transform,
`global_cmvn`, with nmtkit's global mean/std (as float32, the values nmtkit's model buffers
hold). nmtkit applies the same CMVN inside the model. Pre-split pieces spare fairseq its
per-utterance SentencePiece call, so if anything this favours fairseq.

Frames per second are source feature frames (real frames, padding excluded) per second of
wall time in the training loop after --warmup updates, measured the same way for both: the
wrapper that starts each toolkit (ENTRY_POINT_WRAPPER) wraps the function that runs one
update's forward pass (nmtkit `SpeechToTextTask.train_step`, fairseq `Trainer.train_step`) and
records, on entry, the time and sum(net_input.src_lengths) of the batch. Update k's cycle runs
from its entry to update k+1's entry (forward, backward, clip, step, logging and loading the
next batch), so frames/s = frames of updates warmup+1 .. N-1 / (entry time of update N - entry
time of update warmup+1). Neither toolkit's code is changed. Each toolkit's own log
(nmtkit train_log.jsonl, fairseq --log-format json) gives target tokens per second over the
same updates, reported beside it as a cross-check. Peak memory is the process's peak RSS
(wait4 ru_maxrss) and, sampled every 50 ms from /proc, its peak anonymous RSS: nmtkit
memory-maps the feature file, whose pages count in RSS as they are read (page cache, not heap),
while fairseq np.loads each .npy into heap memory. The two venvs may hold different torch builds
(a CUDA build maps more library pages than a CPU one), so RSS above a process that only imports
torch is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import torch_import_rss_mb  # noqa: E402 (a sibling script, not a package)

from nmtkit.data.dictionary import Dictionary  # noqa: E402
from nmtkit.data.indexed_dataset import MMapIndexedDataset, write_index  # noqa: E402

NMTKIT_PYTHON = Path(sys.executable)
DEFAULT_FAIRSEQ_PYTHON = Path("/work/fairseq-venv/bin/python")
FEATURE_DIM = 80

# Starts a console-script entry point after wrapping the function that runs one update, so that
# both toolkits are timed and their batches counted the same way without touching their code.
# argv: HOOK ("module:Class.method") ENTRY ("module:function") PROGRAM ARGS...; the records go
# to $BENCH_STEP_LOG as "monotonic_seconds source_frames target_tokens" lines.
ENTRY_POINT_WRAPPER = """
import importlib, os, sys, time
hook, entry = sys.argv[1], sys.argv[2]
step_log = open(os.environ["BENCH_STEP_LOG"], "w", buffering=1)

def _count(obj):
    if isinstance(obj, dict):
        net_input = obj.get("net_input")
        if isinstance(net_input, dict) and "src_lengths" in net_input:
            return int(net_input["src_lengths"].sum()), int(obj.get("ntokens") or 0)
        return 0, 0
    if isinstance(obj, (list, tuple)):
        counts = [_count(o) for o in obj]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    return 0, 0

hook_module, hook_path = hook.split(":")
owner_name, method_name = hook_path.split(".")
owner = getattr(importlib.import_module(hook_module), owner_name)
original = getattr(owner, method_name)

def timed(self, *args, **kwargs):
    now = time.monotonic()
    frames, tokens = _count(list(args))
    step_log.write(f"{now:.6f} {frames} {tokens}\\n")
    return original(self, *args, **kwargs)

setattr(owner, method_name, timed)
module_name, function_name = entry.split(":")
sys.argv = sys.argv[3:]
sys.exit(getattr(importlib.import_module(module_name), function_name)())
"""
HOOKS = {
    "nmtkit": (
        "nmtkit.tasks.speech_to_text:SpeechToTextTask.train_step",
        "nmtkit_cli.train:cli_main",
    ),
    "fairseq": ("fairseq.trainer:Trainer.train_step", "fairseq_cli.train:cli_main"),
}


@dataclass
class RunResult:
    """What one measured training run produced."""

    toolkit: str
    wall_s: float
    peak_rss_mb: float
    peak_anon_mb: float
    parameters: int | None
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Data: nmtkit's directory (optionally cut to --limit utterances) and fairseq's export of it
# --------------------------------------------------------------------------------------------
def ensure_nmtkit_data(data: Path, speech: Path) -> None:
    """Preprocesses the speech corpus with nmtkit-preprocess (ASR, 1,000 pieces) unless `data`
    already holds a data directory."""
    if (data / "preprocess.json").is_file():
        return
    print(f"preprocessing {speech} -> {data}", flush=True)
    subprocess.run(
        [
            str(NMTKIT_PYTHON.parent / "nmtkit-preprocess"),
            "task=speech_to_text",
            f"train={speech}/train.tsv",
            f"valid={speech}/valid.tsv",
            f"test={speech}/test.tsv",
            "target=src_text",
            "bpe_vocab_size=1000",
            f"destdir={data}",
            "workers=2",
        ],
        check=True,
    )


def limited_nmtkit_data(source: Path, destination: Path, limit: int) -> Path:
    """A data directory whose train split is the first `limit` utterances of `source`'s: the
    other files are symlinks, and the cut split reuses the .bin files (items are stored back to
    back, so the first `limit` of them are a prefix) with a new, shorter index."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for path in source.iterdir():
        if not path.name.startswith("train."):
            (destination / path.name).symlink_to(path.resolve())
    for kind in ("fbank", "target"):
        prefix = source / f"train.{kind}"
        dataset = MMapIndexedDataset(prefix)
        (destination / f"train.{kind}.bin").symlink_to(Path(f"{prefix}.bin").resolve())
        write_index(destination / f"train.{kind}.idx", dataset.dtype, dataset.sizes[:limit].copy())
    ids = (source / "train.ids.txt").read_text(encoding="utf-8").splitlines()[:limit]
    (destination / "train.ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return destination


def export_for_fairseq(nmtkit_data: Path, speech: Path | None, out: Path) -> dict[str, int]:
    """Writes fairseq's speech_to_text inputs for the train split of `nmtkit_data` (module
    docstring); returns the utterance and frame counts."""
    manifest = json.loads((nmtkit_data / "preprocess.json").read_text(encoding="utf-8"))
    if out.exists():
        shutil.rmtree(out)
    (out / "fbank").mkdir(parents=True)
    dictionary = Dictionary.load(nmtkit_data / manifest["target_dict"])
    features = MMapIndexedDataset(nmtkit_data / "train.fbank")
    targets = MMapIndexedDataset(nmtkit_data / "train.target")
    ids = (nmtkit_data / "train.ids.txt").read_text(encoding="utf-8").splitlines()
    speakers = read_speakers(speech / "train.tsv") if speech is not None else {}
    frames = 0
    with open(out / "train.tsv", "w", encoding="utf-8") as tsv:
        tsv.write("id\taudio\tn_frames\ttgt_text\tspeaker\n")
        for index, name in enumerate(ids):
            fbank = np.asarray(features[index], dtype=np.float32).reshape(-1, FEATURE_DIM)
            npy = (out / "fbank" / f"{index}.npy").resolve()
            np.save(npy, fbank)
            target = [int(t) for t in targets[index]]
            # fairseq splits the pieces on spaces, looks them up and appends </s> itself.
            pieces = " ".join(dictionary.symbols[t] for t in target if t != dictionary.eos())
            if dictionary.encode_line(pieces) != target:
                raise RuntimeError(f"utterance {name}: its pieces do not map back to its ids")
            tsv.write(f"{name}\t{npy}\t{len(fbank)}\t{pieces}\t{speakers.get(name, 'unknown')}\n")
            frames += len(fbank)
    # fairseq's Dictionary.load adds <s> <pad> </s> <unk> before the file's symbols, as nmtkit's.
    shutil.copyfile(nmtkit_data / manifest["target_dict"], out / "dict.txt")
    with np.load(nmtkit_data / manifest["cmvn"]) as cmvn:
        np.savez(
            out / "global_cmvn.npz",
            mean=cmvn["mean"].astype(np.float32),
            std=cmvn["std"].astype(np.float32),
        )
    (out / "config.yaml").write_text(
        "vocab_filename: dict.txt\n"
        "input_channels: 1\n"
        f"input_feat_per_channel: {FEATURE_DIM}\n"
        "global_cmvn:\n"
        f"  stats_npz_path: {(out / 'global_cmvn.npz').resolve()}\n"
        "feature_transforms:\n"
        "  '*':\n"
        "  - global_cmvn\n",
        encoding="utf-8",
    )
    return {"utterances": len(ids), "frames": frames}


def read_speakers(manifest: Path) -> dict[str, str]:
    if not manifest.is_file():
        return {}
    lines = manifest.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if "id" not in header or "speaker" not in header:
        return {}
    id_column, speaker_column = header.index("id"), header.index("speaker")
    return {
        columns[id_column]: columns[speaker_column]
        for columns in (line.split("\t") for line in lines[1:])
        if len(columns) == len(header)
    }


# --------------------------------------------------------------------------------------------
# The two training commands (same model, features, batches, optimizer, dropout, seed)
# --------------------------------------------------------------------------------------------
def nmtkit_train_args(data: Path, save_dir: Path, opts: argparse.Namespace) -> list[str]:
    return [
        "task=speech_to_text",
        f"task.data={data}",
        "task.spec_augment=none",
        "model=s2t_transformer_xs",
        "model.ctc_head=none",  # fairseq's s2t_transformer has no CTC head
        "criterion=label_smoothed_cross_entropy",
        "criterion.label_smoothing=0.1",
        "optimizer=adam",
        "optimizer.lr=2e-3",
        "optimizer.betas=[0.9,0.98]",
        "lr_scheduler=inverse_sqrt",
        "lr_scheduler.warmup_updates=500",
        "optimization.clip_norm=10.0",
        f"dataset.max_tokens={opts.max_tokens}",
        f"dataset.required_batch_size_multiple={opts.batch_size_multiple}",
        "dataset.num_workers=0",
        f"optimization.max_update={opts.updates}",
        "dataset.disable_validation=true",
        "checkpoint.no_save=true",
        f"checkpoint.save_dir={save_dir}",
        "common.device=cpu",
        "common.log_interval=1",
        "common.log_format=simple",
        "common.seed=1",
        *opts.nmtkit_arg,
    ]


def fairseq_train_args(data: Path, save_dir: Path, opts: argparse.Namespace) -> list[str]:
    return [
        str(data), "--config-yaml", "config.yaml", "--task", "speech_to_text",
        "--train-subset", "train", "--arch", "s2t_transformer_xs",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "2e-3",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "500", "--clip-norm", "10.0",
        "--max-tokens", str(opts.max_tokens),
        "--required-batch-size-multiple", str(opts.batch_size_multiple),
        "--num-workers", "0", "--max-update", str(opts.updates),
        "--disable-validation", "--no-save", "--save-dir", str(save_dir), "--cpu",
        "--log-format", "json", "--log-interval", "1", "--seed", "1",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# One measured run
# --------------------------------------------------------------------------------------------
class AnonymousRssSampler:
    """Polls /proc/PID/status for the peak RssAnon (heap, not memory-mapped file pages)."""

    def __init__(self, pid: int, period_s: float = 0.05) -> None:
        self.pid, self.period_s, self.peak_kb = pid, period_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            self._stop.wait(self.period_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def run_training(
    toolkit: str, python: Path, args: list[str], run_dir: Path, threads: int
) -> RunResult:
    hook, entry = HOOKS[toolkit]
    program = "nmtkit-train" if toolkit == "nmtkit" else "fairseq-train"
    command = [str(python), "-c", ENTRY_POINT_WRAPPER, hook, entry, program, *args]
    env = {
        **os.environ,
        "BENCH_STEP_LOG": str(run_dir / "steps.txt"),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "PYTHONWARNINGS": "ignore",
    }
    log_path = run_dir / "stdout.log"
    with open(log_path, "w") as log:
        log.write(" ".join([program, *args]) + "\n")
        log.flush()
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = AnonymousRssSampler(process.pid)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix all runs together).
        _, status, rusage = os.wait4(process.pid, 0)
        wall_s = time.monotonic() - started
        peak_anon_mb = sampler.stop()
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{toolkit} failed (exit {exit_code}), log {log_path}:\n{tail}")
    return RunResult(
        toolkit,
        wall_s,
        rusage.ru_maxrss / 1024,
        peak_anon_mb,
        parameter_count(log_path.read_text()),
    )


def parameter_count(log: str) -> int | None:
    """Model size from the start-up log: nmtkit 'with N parameters', fairseq 'model params: N'."""
    match = re.search(r"with ([\d,]+) parameters", log) or re.search(
        r"num\. (?:shared )?model params: ([\d,]+)", log
    )
    return int(match.group(1).replace(",", "")) if match else None


def step_throughput(step_log: Path, warmup: int) -> dict[str, float]:
    """Frames/s and target tokens/s over update cycles warmup+1 .. N-1 (module docstring)."""
    records = [line.split() for line in step_log.read_text().splitlines() if line.strip()]
    times = [float(r[0]) for r in records]
    frames = [int(r[1]) for r in records]
    tokens = [int(r[2]) for r in records]
    if len(records) < warmup + 2:
        raise RuntimeError(
            f"{step_log}: {len(records)} updates recorded, need at least --warmup + 2 = "
            f"{warmup + 2}: raise --updates"
        )
    seconds = times[-1] - times[warmup]
    cycles = len(records) - 1 - warmup
    return {
        "frames_per_s": sum(frames[warmup:-1]) / seconds,
        "target_tokens_per_s": sum(tokens[warmup:-1]) / seconds,
        "s_per_update": seconds / cycles,
        "frames_per_update": sum(frames[warmup:-1]) / cycles,
        "measured_updates": cycles,
        "all_frames_per_update": sum(frames) / len(frames),
    }


def own_log_wps(toolkit: str, run_dir: Path, warmup: int) -> tuple[float, float]:
    """Target tokens/s from the toolkit's own per-update log lines after `warmup` updates,
    and the last logged training loss."""
    records = []
    if toolkit == "nmtkit":
        for line in (run_dir / "train_log.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "train":
                records.append(
                    (int(record["update"]), record["wpb"], record["wps"], record["loss"])
                )
    else:
        # "INFO:train_inner:{...}" or "... | train_inner | {...}" depending on the log handler.
        for line in (run_dir / "stdout.log").read_text().splitlines():
            match = re.search(r"train_inner\W*(\{.*\})\s*$", line)
            if match:
                r = json.loads(match.group(1))
                records.append(
                    (
                        int(float(r["num_updates"])),
                        float(r["wpb"]),
                        float(r["wps"]),
                        float(r["loss"]),
                    )
                )
    # fairseq logs wps 0 for the very first update (its timer has no interval yet).
    kept = [r for r in records if r[0] > warmup and r[2] > 0]
    if not kept:
        return float("nan"), float("nan")
    tokens = sum(wpb for _, wpb, _, _ in kept)
    seconds = sum(wpb / wps for _, wpb, wps, _ in kept)
    return tokens / seconds, records[-1][3]


def train_once(toolkit: str, opts: argparse.Namespace, run_dir: Path) -> RunResult:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if toolkit == "nmtkit":
        args = nmtkit_train_args(opts.nmtkit_run_data, run_dir, opts)
        result = run_training(toolkit, NMTKIT_PYTHON, args, run_dir, opts.threads)
    else:
        args = fairseq_train_args(opts.fairseq_data, run_dir, opts)
        result = run_training(toolkit, opts.fairseq_python, args, run_dir, opts.threads)
    result.metrics = step_throughput(run_dir / "steps.txt", opts.warmup)
    wps, loss = own_log_wps(toolkit, run_dir, opts.warmup)
    result.metrics["own_log_wps"] = wps
    result.metrics["final_loss"] = loss
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def print_report(results: list[RunResult], opts: argparse.Namespace) -> dict[str, object]:
    print(
        "\n| run | frames/s | s/update | frames/update | target tok/s (hook) | "
        "target tok/s (own log) | peak RSS MB | peak anon RSS MB | wall s | loss |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(results):
        m = r.metrics
        print(
            f"| {i // 2} {r.toolkit} | {m['frames_per_s']:.0f} | {m['s_per_update']:.2f} | "
            f"{m['frames_per_update']:.0f} | {m['target_tokens_per_s']:.0f} | "
            f"{m['own_log_wps']:.0f} | {r.peak_rss_mb:.0f} | {r.peak_anon_mb:.0f} | "
            f"{r.wall_s:.1f} | {m['final_loss']:.2f} |"
        )
    medians: dict[str, dict[str, float]] = {}
    for toolkit in ("nmtkit", "fairseq"):
        runs = [r for r in results if r.toolkit == toolkit]
        python = NMTKIT_PYTHON if toolkit == "nmtkit" else opts.fairseq_python
        medians[toolkit] = {
            "frames_per_s": statistics.median(r.metrics["frames_per_s"] for r in runs),
            "own_log_wps": statistics.median(r.metrics["own_log_wps"] for r in runs),
            "peak_rss_mb": statistics.median(r.peak_rss_mb for r in runs),
            "peak_anon_mb": statistics.median(r.peak_anon_mb for r in runs),
            "torch_import_rss_mb": torch_import_rss_mb(python),
            "parameters": runs[0].parameters or 0,
        }
    n, f = medians["nmtkit"], medians["fairseq"]
    ratios = {
        "frames_per_s": n["frames_per_s"] / f["frames_per_s"],
        "own_log_wps": n["own_log_wps"] / f["own_log_wps"],
        "peak_rss": n["peak_rss_mb"] / f["peak_rss_mb"],
        "peak_anon_rss": n["peak_anon_mb"] / f["peak_anon_mb"],
        "rss_above_torch_import": (n["peak_rss_mb"] - n["torch_import_rss_mb"])
        / (f["peak_rss_mb"] - f["torch_import_rss_mb"]),
    }
    pairs = [
        results[i].metrics["frames_per_s"] / results[i + 1].metrics["frames_per_s"]
        if results[i].toolkit == "nmtkit"
        else results[i + 1].metrics["frames_per_s"] / results[i].metrics["frames_per_s"]
        for i in range(0, len(results) - 1, 2)
    ]
    print(
        f"\n| median | nmtkit | fairseq | nmtkit/fairseq |\n|---|---:|---:|---:|\n"
        f"| frames/s | {n['frames_per_s']:.0f} | {f['frames_per_s']:.0f} | "
        f"{ratios['frames_per_s']:.2f}x |\n"
        f"| target tok/s (own logs) | {n['own_log_wps']:.0f} | {f['own_log_wps']:.0f} | "
        f"{ratios['own_log_wps']:.2f}x |\n"
        f"| peak RSS MB | {n['peak_rss_mb']:.0f} | {f['peak_rss_mb']:.0f} | "
        f"{ratios['peak_rss']:.2f}x |\n"
        f"| peak anonymous RSS MB | {n['peak_anon_mb']:.0f} | {f['peak_anon_mb']:.0f} | "
        f"{ratios['peak_anon_rss']:.2f}x |\n"
        f"| peak RSS above 'import torch' MB | {n['peak_rss_mb'] - n['torch_import_rss_mb']:.0f}"
        f" | {f['peak_rss_mb'] - f['torch_import_rss_mb']:.0f} | "
        f"{ratios['rss_above_torch_import']:.2f}x |\n"
        f"| parameters | {n['parameters']:,} | {f['parameters']:,} | |"
    )
    print(f"\nframes/s ratio per adjacent pair: {', '.join(f'{p:.2f}' for p in pairs)}")
    return {
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(opts).items()
            if k not in ("json",)
        },
        "medians": medians,
        "ratios": ratios,
        "pair_frames_per_s_ratios": pairs,
        "runs": [
            {
                "toolkit": r.toolkit,
                "wall_s": r.wall_s,
                "peak_rss_mb": r.peak_rss_mb,
                "peak_anon_rss_mb": r.peak_anon_mb,
                "parameters": r.parameters,
                **r.metrics,
            }
            for r in results
        ],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speech", type=Path, default=Path("../shared/data/speech"),
                        help="speech corpus (train/valid/test.tsv); preprocessed into "
                        "--nmtkit-data when that does not exist; speaker names")  # fmt: skip
    parser.add_argument("--nmtkit-data", type=Path, default=None,
                        help="nmtkit speech data (default WORK_DIR/nmtkit-data)")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nmtkit-s2t-train-speed"))
    parser.add_argument("--fairseq-python", type=Path, default=DEFAULT_FAIRSEQ_PYTHON)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="updates left out of frames/s")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=20000, help="frames per batch")
    parser.add_argument("--batch-size-multiple", type=int, default=8,
                        help="batch sizes rounded down to a multiple of this (fairseq's "
                        "default 8), for both toolkits")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads for both")
    parser.add_argument("--limit", type=int, default=0,
                        help="train on the first N utterances only (smoke tests)")  # fmt: skip
    parser.add_argument("--nmtkit-arg", action="append", default=[],
                        help="extra nmtkit-train setting, e.g. optimizer.fused=false")  # fmt: skip
    parser.add_argument("--only", choices=["nmtkit", "fairseq"], help="run one toolkit only")
    parser.add_argument("--json", type=Path, help="write the results here")
    opts = parser.parse_args()
    opts.work_dir = opts.work_dir.resolve()
    opts.speech = opts.speech.resolve()
    opts.nmtkit_data = (opts.nmtkit_data or opts.work_dir / "nmtkit-data").resolve()
    return opts


def main() -> None:
    opts = parse_args()
    ensure_nmtkit_data(opts.nmtkit_data, opts.speech)
    opts.nmtkit_run_data = opts.nmtkit_data
    if opts.limit:
        opts.nmtkit_run_data = limited_nmtkit_data(
            opts.nmtkit_data, opts.work_dir / f"nmtkit-data-limit{opts.limit}", opts.limit
        )
    opts.fairseq_data = opts.work_dir / f"fairseq-data{f'-limit{opts.limit}' if opts.limit else ''}"
    speech = opts.speech if opts.speech.is_dir() else None
    exported = export_for_fairseq(opts.nmtkit_run_data, speech, opts.fairseq_data)
    print(
        f"fairseq inputs: {exported['utterances']} utterances, {exported['frames']} frames "
        f"-> {opts.fairseq_data}",
        flush=True,
    )
    toolkits = [opts.only] if opts.only else ["nmtkit", "fairseq"]
    results = []
    for repeat in range(opts.repeats):
        # Flip the order every repeat so neither toolkit always runs in the same slot.
        order = toolkits if repeat % 2 == 0 else toolkits[::-1]
        for toolkit in order:
            result = train_once(toolkit, opts, opts.work_dir / f"{toolkit}_{repeat}")
            print(
                f"repeat {repeat} {toolkit:<8} frames/s {result.metrics['frames_per_s']:.0f} "
                f"peak RSS {result.peak_rss_mb:.0f} MB wall {result.wall_s:.1f}s "
                f"params {result.parameters}",
                flush=True,
            )
            results.append(result)
    if opts.only:
        return
    summary = print_report(results, opts)
    if opts.json:
        opts.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
