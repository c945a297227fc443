"""Training speed and peak memory: nmtkit-train against fairseq-train, side by side.

Both toolkits train the same model (3+3 layers, 256/1024, 4 heads, shared embeddings) on the
same binarized data directory (nmtkit's data directories are fairseq-compatible), with the
same batch size, optimizer, dropout and number of updates, no validation and no checkpoints.
Runs alternate between the toolkits (the order flips every repeat) so that a shared, noisy
machine slows both alike; the table reports every run, the medians and their ratio.

    python benchmarks/train_speed.py --data /work/bench/data-bin --updates 60 --repeats 2
    python benchmarks/train_speed.py --data data-bin --device cuda \\
        --nmtkit-precision bf16 --fairseq-precision fp16 --updates 300 --warmup 50

Words per second are target tokens per second over the updates after --warmup: from each
toolkit's own per-interval log (nmtkit `train_log.jsonl`, fairseq `--log-format json`),
time = tokens / wps per interval, summed. Peak memory is the peak RSS of the training
process on CPU and torch.cuda.max_memory_allocated() on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NMTKIT_PYTHON = Path(sys.executable)
DEFAULT_FAIRSEQ_PYTHON = Path("/work/fairseq-venv/bin/python")
DEFAULT_RAW = Path("/work/shared/data/de-en")

# Runs a console-script entry point and, at exit, prints the CUDA peak memory (when CUDA was
# used) so that both toolkits are measured the same way without touching their code.
ENTRY_POINT_WRAPPER = """
import atexit, importlib, sys
def _report_cuda_peak():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        print("BENCH_CUDA_PEAK_BYTES", torch.cuda.max_memory_allocated(), flush=True)
atexit.register(_report_cuda_peak)
module_name, function_name = sys.argv[1].split(":")
sys.argv = [sys.argv[2]] + sys.argv[3:]
sys.exit(getattr(importlib.import_module(module_name), function_name)())
"""


@dataclass
class RunResult:
    """What one measured subprocess produced."""

    toolkit: str
    seconds: float
    peak_rss_mb: float
    cuda_peak_mb: float | None
    log_path: Path
    metrics: dict[str, float] = field(default_factory=dict)


def run_measured(
    toolkit: str,
    python: Path,
    entry_point: str,
    program: str,
    args: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
) -> RunResult:
    """Runs one command in a subprocess; returns wall time, peak RSS and CUDA peak memory."""
    command = [str(python), "-c", ENTRY_POINT_WRAPPER, entry_point, program, *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(" ".join(command[3:]) + "\n")
        log.flush()
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix all runs together).
        _, status, rusage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{toolkit} failed (exit {process.returncode}), log {log_path}:\n{tail}")
    cuda_peak = None
    for line in log_path.read_text().splitlines():
        if line.startswith("BENCH_CUDA_PEAK_BYTES"):
            cuda_peak = int(line.split()[1]) / 2**20
    return RunResult(toolkit, seconds, rusage.ru_maxrss / 1024, cuda_peak, log_path)


def torch_import_rss_mb(python: Path) -> float:
    """Peak RSS of a process that only imports torch and runs one matmul. The two venvs can
    hold different torch builds (a CUDA build maps far more library pages than a CPU one,
    even on CPU), so peak RSS is also reported above this baseline."""
    code = "import torch; x = torch.randn(256, 256); x @ x"
    process = subprocess.Popen([str(python), "-c", code])
    _, _, rusage = os.wait4(process.pid, 0)
    return rusage.ru_maxrss / 1024


def ensure_data(data: Path, raw: Path) -> None:
    """Preprocesses the raw de-en corpus with nmtkit-preprocess unless `data` exists."""
    if (data / "preprocess.json").is_file() or (data / "dict.en.txt").is_file():
        return
    print(f"preprocessing {raw} -> {data}", flush=True)
    subprocess.run(
        [
            str(NMTKIT_PYTHON.parent / "nmtkit-preprocess"),
            "source_lang=de",
            "target_lang=en",
            f"trainpref={raw}/train",
            f"validpref={raw}/valid",
            f"testpref={raw}/test",
            f"destdir={data}",
            "bpe=sentencepiece",
            "bpe_vocab_size=8000",
            "joined_dictionary=true",
            "workers=2",
        ],
        check=True,
    )


# --------------------------------------------------------------------------------------------
# The two training commands (same model, data, batch size, optimizer, dropout, seed)
# --------------------------------------------------------------------------------------------
def nmtkit_train_args(
    data: Path,
    save_dir: Path,
    updates: int,
    max_tokens: int,
    device: str,
    precision: str,
    log_interval: int,
    *,
    save: bool = False,
) -> list[str]:
    args = [
        f"task.data={data}",
        "model=transformer_small",
        "model.share_all_embeddings=true",
        "model.dropout=0.1",
        "criterion=label_smoothed_cross_entropy",
        "criterion.label_smoothing=0.1",
        "optimizer=adam",
        "optimizer.lr=7e-4",
        "optimizer.betas=[0.9,0.98]",
        "lr_scheduler=inverse_sqrt",
        "lr_scheduler.warmup_updates=1000",
        f"dataset.max_tokens={max_tokens}",
        f"optimization.max_update={updates}",
        "dataset.disable_validation=true",
        f"checkpoint.save_dir={save_dir}",
        f"common.device={device}",
        f"common.precision={precision}",
        f"common.log_interval={log_interval}",
        "common.log_format=simple",
        "common.seed=1",
    ]
    if not save:
        args.append("checkpoint.no_save=true")
    return args


def fairseq_train_args(
    data: Path,
    save_dir: Path,
    updates: int,
    max_tokens: int,
    device: str,
    precision: str,
    log_interval: int,
    *,
    save: bool = False,
) -> list[str]:
    args = [
        str(data),
        "--task", "translation", "--source-lang", "de", "--target-lang", "en",
        "--arch", "transformer",
        "--encoder-layers", "3", "--decoder-layers", "3",
        "--encoder-embed-dim", "256", "--decoder-embed-dim", "256",
        "--encoder-ffn-embed-dim", "1024", "--decoder-ffn-embed-dim", "1024",
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
        "--share-all-embeddings", "--dropout", "0.1",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "7e-4",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "1000",
        "--max-tokens", str(max_tokens), "--max-update", str(updates),
        "--disable-validation", "--save-dir", str(save_dir),
        "--log-format", "json", "--log-interval", str(log_interval), "--seed", "1",
    ]  # fmt: skip
    if save:
        # Only the final checkpoint_last.pt is needed (for generation/quality).
        args += ["--no-epoch-checkpoints", "--save-interval-updates", str(updates)]
        args += ["--keep-interval-updates", "1"]
    else:
        args.append("--no-save")
    if device == "cpu":
        args.append("--cpu")
    if precision in ("fp16", "bf16"):
        args.append(f"--{precision}")
    return args


# --------------------------------------------------------------------------------------------
# Log parsing: per-interval (end update, updates in interval, wpb, wps, loss)
# --------------------------------------------------------------------------------------------
def nmtkit_intervals(save_dir: Path) -> list[tuple[int, int, float, float, float]]:
    intervals, previous = [], 0
    for line in (save_dir / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") != "train":
            continue
        update = int(record["update"])
        intervals.append((update, update - previous, record["wpb"], record["wps"], record["loss"]))
        previous = update
    return intervals


def fairseq_intervals(log_path: Path) -> list[tuple[int, int, float, float, float]]:
    intervals, previous = [], 0
    for line in log_path.read_text().splitlines():
        if "| train_inner |" not in line:
            continue
        record = json.loads(line.split("| train_inner |", 1)[1])
        update = int(float(record["num_updates"]))
        wps = float(record["wps"])
        intervals.append(
            (update, update - previous, float(record["wpb"]), wps, float(record["loss"]))
        )
        previous = update
    return intervals


def steady_state(
    intervals: list[tuple[int, int, float, float, float]], warmup: int
) -> dict[str, float]:
    """Target tokens per second over the intervals that start at or after `warmup` updates."""
    kept = [i for i in intervals if i[0] - i[1] >= warmup]
    if not kept:
        raise RuntimeError(f"no log interval after the first {warmup} updates: raise --updates")
    tokens = sum(n * wpb for _, n, wpb, _, _ in kept)
    seconds = sum(n * wpb / wps for _, n, wpb, wps, _ in kept)
    updates = sum(n for _, n, _, _, _ in kept)
    return {
        "wps": tokens / seconds,
        "sec_per_update": seconds / updates,
        "wpb": tokens / updates,
        "measured_updates": updates,
        "final_loss": intervals[-1][4],
    }


def train_once(toolkit: str, opts: argparse.Namespace, run_dir: Path) -> RunResult:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    common = (opts.data, run_dir, opts.updates, opts.max_tokens, opts.device)
    if toolkit == "nmtkit":
        args = nmtkit_train_args(*common, opts.nmtkit_precision, opts.log_interval)
        args += opts.nmtkit_arg
        result = run_measured(
            toolkit, NMTKIT_PYTHON, "nmtkit_cli.train:cli_main", "nmtkit-train", args,
            run_dir / "stdout.log", env=thread_env(opts),
        )  # fmt: skip
        intervals = nmtkit_intervals(run_dir)
    else:
        args = fairseq_train_args(*common, opts.fairseq_precision, opts.log_interval)
        result = run_measured(
            toolkit, opts.fairseq_python, "fairseq_cli.train:cli_main", "fairseq-train", args,
            run_dir / "stdout.log", env=thread_env(opts),
        )  # fmt: skip
        intervals = fairseq_intervals(run_dir / "stdout.log")
    result.metrics = steady_state(intervals, opts.warmup)
    return result


def thread_env(opts: argparse.Namespace) -> dict[str, str]:
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    return env


def memory_mb(result: RunResult) -> float:
    return result.cuda_peak_mb if result.cuda_peak_mb is not None else result.peak_rss_mb


def print_report(results: list[RunResult], opts: argparse.Namespace) -> dict[str, object]:
    memory_name = "peak CUDA MB" if opts.device.startswith("cuda") else "peak RSS MB"
    print(f"\n{'run':<10} {'wps':>9} {'s/update':>9} {'wpb':>7} {memory_name:>13} "
          f"{'wall s':>7} {'loss':>6}")  # fmt: skip
    for r in results:
        m = r.metrics
        print(
            f"{r.toolkit:<10} {m['wps']:>9.0f} {m['sec_per_update']:>9.3f} {m['wpb']:>7.0f} "
            f"{memory_mb(r):>13.0f} {r.seconds:>7.1f} {m['final_loss']:>6.2f}"
        )
    summary: dict[str, object] = {"runs": [], "device": opts.device}
    medians = {}
    for toolkit in ("nmtkit", "fairseq"):
        runs = [r for r in results if r.toolkit == toolkit]
        medians[toolkit] = {
            "wps": statistics.median(r.metrics["wps"] for r in runs),
            "memory_mb": statistics.median(memory_mb(r) for r in runs),
        }
        if not opts.device.startswith("cuda"):
            python = NMTKIT_PYTHON if toolkit == "nmtkit" else opts.fairseq_python
            baseline = torch_import_rss_mb(python)
            medians[toolkit]["torch_import_rss_mb"] = baseline
            medians[toolkit]["rss_above_torch_import_mb"] = medians[toolkit]["memory_mb"] - baseline
    pairs = [
        results[i].metrics["wps"] / results[i + 1].metrics["wps"]
        if results[i].toolkit == "nmtkit"
        else results[i + 1].metrics["wps"] / results[i].metrics["wps"]
        for i in range(0, len(results) - 1, 2)
    ]
    wps_ratio = medians["nmtkit"]["wps"] / medians["fairseq"]["wps"]
    memory_ratio = medians["nmtkit"]["memory_mb"] / medians["fairseq"]["memory_mb"]
    print(
        f"\nmedian wps: nmtkit {medians['nmtkit']['wps']:.0f}, fairseq "
        f"{medians['fairseq']['wps']:.0f} -> nmtkit/fairseq {wps_ratio:.2f}x "
        f"(per adjacent pair: {', '.join(f'{p:.2f}' for p in pairs)})"
    )
    print(
        f"median {memory_name}: nmtkit {medians['nmtkit']['memory_mb']:.0f}, fairseq "
        f"{medians['fairseq']['memory_mb']:.0f} -> nmtkit/fairseq {memory_ratio:.2f}x"
    )
    if "torch_import_rss_mb" in medians["nmtkit"]:
        above = {k: medians[k]["rss_above_torch_import_mb"] for k in medians}
        print(
            f"peak RSS above 'import torch' (nmtkit {medians['nmtkit']['torch_import_rss_mb']:.0f}"
            f" MB, fairseq {medians['fairseq']['torch_import_rss_mb']:.0f} MB): nmtkit "
            f"{above['nmtkit']:.0f}, fairseq {above['fairseq']:.0f} -> nmtkit/fairseq "
            f"{above['nmtkit'] / above['fairseq']:.2f}x"
        )
    summary["medians"] = medians
    summary["wps_ratio"] = wps_ratio
    summary["pair_wps_ratios"] = pairs
    summary["memory_ratio"] = memory_ratio
    summary["runs"] = [
        {"toolkit": r.toolkit, "wall_s": r.seconds, "memory_mb": memory_mb(r), **r.metrics}
        for r in results
    ]
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/bench/data-bin"),
                        help="binarized de-en data directory (made with nmtkit-preprocess "
                        "from --raw if missing)")  # fmt: skip
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="raw de-en corpus")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nmtkit-train-speed"))
    parser.add_argument("--fairseq-python", type=Path, default=DEFAULT_FAIRSEQ_PYTHON)
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="updates left out of wps")
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--nmtkit-precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--fairseq-precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: default)")
    parser.add_argument("--nmtkit-arg", action="append", default=[],
                        help="extra nmtkit-train setting, e.g. optimizer.fused=false")  # fmt: skip
    parser.add_argument("--only", choices=["nmtkit", "fairseq"], help="run one toolkit only")
    parser.add_argument("--json", type=Path, help="write the results here")
    opts = parser.parse_args()
    opts.data = opts.data.resolve()
    return opts


def main() -> None:
    opts = parse_args()
    ensure_data(opts.data, opts.raw)
    toolkits = [opts.only] if opts.only else ["nmtkit", "fairseq"]
    results = []
    for repeat in range(opts.repeats):
        # Flip the order every repeat so neither toolkit always runs in the same slot.
        order = toolkits if repeat % 2 == 0 else toolkits[::-1]
        for toolkit in order:
            result = train_once(toolkit, opts, opts.work_dir / f"{toolkit}_{repeat}")
            print(
                f"repeat {repeat} {toolkit:<8} wps {result.metrics['wps']:.0f} "
                f"memory {memory_mb(result):.0f} MB wall {result.seconds:.1f}s",
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
