"""Binarization speed and memory of `nmtkit-preprocess` against `fairseq-preprocess`.

Both tools binarize the same SentencePiece-encoded corpus with the same dictionaries
(nmtkit: bpe=none srcdict=... tgtdict=...; fairseq: --srcdict --tgtdict --dataset-impl mmap)
and the same number of workers, side by side, several times each in alternating order; the
outputs are compared byte for byte. Then the full `nmtkit-preprocess` (SentencePiece
training included) is timed on the raw corpus.

    python benchmarks/preprocess.py --data /work/shared/data/de-en --workers 1 2

Reported per tool: wall time of the whole command (best of --trials), start-up time (the
command with --help, which imports everything), throughput in lines per second (source and
target lines, both counted) end to end and with start-up subtracted, and the peak resident
memory of the largest process (main or worker) as the kernel reports it (wait4).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sentencepiece

LANGUAGES = ("de", "en")
SPLITS = ("train", "valid", "test")
HERE = Path(sys.executable).parent


@dataclass
class Measurement:
    wall_seconds: float
    peak_rss_mib: float


# Runs argv[1:] in a grandchild and prints its peak RSS. A child forked from this (large)
# benchmark process would inherit its memory high-water mark across exec; one forked from a
# bare `python -S` reports the command's own peak.
_RSS_TRAMPOLINE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def timed(command: list[str]) -> Measurement:
    """Runs `command`; returns its wall time and the peak RSS (MiB) of its largest process,
    the main one or a worker."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-S", "-c", _RSS_TRAMPOLINE, *command], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    exit_code, max_rss_kib = map(int, result.stdout.split())
    if exit_code != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return Measurement(elapsed, max_rss_kib / 1024)


def prepare_corpus(data: Path, workdir: Path, repeat: int, vocab_size: int) -> tuple[Path, int]:
    """SentencePiece-encodes data/{split}.{lang} into workdir/tok (train repeated `repeat`
    times); returns the folder and the number of lines to binarize (both languages)."""
    tokenized = workdir / "tok"
    tokenized.mkdir(parents=True)
    joined = workdir / "spm_train.txt"
    with open(joined, "w", encoding="utf-8") as output:
        for lang in LANGUAGES:
            output.write((data / f"train.{lang}").read_text(encoding="utf-8"))
    sentencepiece.SentencePieceTrainer.train(
        input=str(joined),
        model_prefix=str(workdir / "spm"),
        vocab_size=vocab_size,
        pad_id=-1,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=str(workdir / "spm.model"))
    total_lines = 0
    for split in SPLITS:
        for lang in LANGUAGES:
            lines = (data / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            pieces = processor.encode(lines, out_type=str, num_threads=os.cpu_count() or 1)
            text = "".join(" ".join(line) + "\n" for line in pieces)
            copies = repeat if split == "train" else 1
            (tokenized / f"{split}.{lang}").write_text(text * copies, encoding="utf-8")
            total_lines += len(lines) * copies
    return tokenized, total_lines


def nmtkit_command(tokenized: Path, dictionaries: Path, destdir: Path, workers: int) -> list[str]:
    return [
        str(HERE / "nmtkit-preprocess"),
        "source_lang=de",
        "target_lang=en",
        *(f"{split}pref={tokenized / split}" for split in SPLITS),
        f"destdir={destdir}",
        "bpe=none",
        f"srcdict={dictionaries / 'dict.de.txt'}",
        f"tgtdict={dictionaries / 'dict.en.txt'}",
        f"workers={workers}",
    ]


def fairseq_command(
    fairseq: Path, tokenized: Path, dictionaries: Path, destdir: Path, workers: int
) -> list[str]:
    return [
        str(fairseq),
        "--source-lang",
        "de",
        "--target-lang",
        "en",
        *(arg for split in SPLITS for arg in (f"--{split}pref", str(tokenized / split))),
        "--destdir",
        str(destdir),
        "--srcdict",
        str(dictionaries / "dict.de.txt"),
        "--tgtdict",
        str(dictionaries / "dict.en.txt"),
        "--dataset-impl",
        "mmap",
        "--workers",
        str(workers),
    ]


def same_binaries(first: Path, second: Path) -> bool:
    names = [
        f"{split}.de-en.{lang}.{suffix}"
        for split in SPLITS
        for lang in LANGUAGES
        for suffix in ("bin", "idx")
    ]
    return all((first / name).read_bytes() == (second / name).read_bytes() for name in names)


def _busy_loop(iterations: int) -> int:
    total = 0
    for value in range(iterations):
        total += value
    return total


def parallel_headroom(processes: int) -> float:
    """How many times faster `processes` CPU-bound processes finish than one doing all the
    work: about `processes` on an idle machine, near 1 when other jobs hold the cores."""
    if processes <= 1:
        return 1.0
    iterations = 5_000_000
    started = time.perf_counter()
    for _ in range(processes):
        _busy_loop(iterations)
    serial = time.perf_counter() - started
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_busy_loop, [0] * processes)  # start-up outside the timing
        started = time.perf_counter()
        pool.map(_busy_loop, [iterations] * processes)
        parallel = time.perf_counter() - started
    return serial / parallel


def startup_seconds(executable: str, trials: int) -> float:
    return min(timed([executable, "--help"]).wall_seconds for _ in range(trials))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/de-en"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=3, help="runs per tool and setting")
    parser.add_argument("--repeat", type=int, default=1, help="copies of train to binarize")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument(
        "--fairseq-preprocess",
        type=Path,
        default=Path("/work/fairseq-venv/bin/fairseq-preprocess"),
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the full-pipeline timing")
    args = parser.parse_args()
    has_fairseq = args.fairseq_preprocess.is_file()

    with tempfile.TemporaryDirectory(prefix="nmtkit-bench-") as folder:
        workdir = Path(folder)
        tokenized, lines = prepare_corpus(args.data, workdir, args.repeat, args.vocab_size)
        dictionaries = workdir / "dicts"
        subprocess.run(
            [
                str(HERE / "nmtkit-preprocess"),
                "source_lang=de",
                "target_lang=en",
                f"trainpref={tokenized / 'train'}",
                f"destdir={dictionaries}",
                "bpe=none",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(
            f"corpus: {args.data}, SentencePiece {args.vocab_size} (joined), train x{args.repeat}"
        )
        print(f"lines binarized per run: {lines} (source + target, train+valid+test)")
        startup = {"nmtkit": startup_seconds(str(HERE / "nmtkit-preprocess"), args.trials)}
        if has_fairseq:
            startup["fairseq"] = startup_seconds(str(args.fairseq_preprocess), args.trials)
        for workers in args.workers:
            if workers > 1:
                print(
                    f"parallel headroom: {workers} CPU-bound processes run "
                    f"{parallel_headroom(workers):.2f}x faster than one (ideal {workers}.00x)"
                )
        print("start-up (--help): " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))
        print()
        print(
            "| workers | tool | wall s (best) | wall s (median) | lines/s end to end "
            "| lines/s minus start-up | peak RSS MiB |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|")
        for workers in args.workers:
            results: dict[str, list[Measurement]] = {"nmtkit": [], "fairseq": []}
            for trial in range(args.trials):
                order = ["nmtkit", "fairseq"] if trial % 2 == 0 else ["fairseq", "nmtkit"]
                for tool in order:
                    destdir = workdir / f"{tool}_{workers}"
                    shutil.rmtree(destdir, ignore_errors=True)
                    if tool == "nmtkit":
                        command = nmtkit_command(tokenized, dictionaries, destdir, workers)
                    elif has_fairseq:
                        command = fairseq_command(
                            args.fairseq_preprocess, tokenized, dictionaries, destdir, workers
                        )
                    else:
                        continue
                    results[tool].append(timed(command))
            best = {}
            for tool, measurements in results.items():
                if not measurements:
                    continue
                walls = [m.wall_seconds for m in measurements]
                best[tool] = min(walls)
                net = max(best[tool] - startup[tool], 1e-9)
                print(
                    f"| {workers} | {tool} | {best[tool]:.2f} | {statistics.median(walls):.2f} "
                    f"| {lines / best[tool]:,.0f} | {lines / net:,.0f} "
                    f"| {max(m.peak_rss_mib for m in measurements):.0f} |"
                )
            if "fairseq" in best:
                net_ratio = (best["fairseq"] - startup["fairseq"]) / (
                    best["nmtkit"] - startup["nmtkit"]
                )
                identical = same_binaries(
                    workdir / f"nmtkit_{workers}", workdir / f"fairseq_{workers}"
                )
                print(
                    f"| {workers} | **ratio nmtkit/fairseq** | | | "
                    f"**{best['fairseq'] / best['nmtkit']:.2f}x** | **{net_ratio:.2f}x** "
                    f"| (outputs byte-identical: {'yes' if identical else 'NO'}) |"
                )

        if not args.skip_full:
            destdir = workdir / "full"
            command = [
                str(HERE / "nmtkit-preprocess"),
                "source_lang=de",
                "target_lang=en",
                *(f"{split}pref={args.data / split}" for split in SPLITS),
                f"destdir={destdir}",
                "bpe=sentencepiece",
                f"bpe_vocab_size={args.vocab_size}",
                "joined_dictionary=true",
                "workers=2",
            ]
            measurement = timed(command)
            print()
            print(
                f"full nmtkit-preprocess on {args.data} (raw text, SentencePiece training "
                f"included, vocab {args.vocab_size}, joined, workers=2): "
                f"{measurement.wall_seconds:.1f} s, peak RSS {measurement.peak_rss_mib:.0f} MiB"
            )


if __name__ == "__main__":
    main()
