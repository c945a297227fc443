"""Generation speed: nmtkit-generate against fairseq-generate, side by side.

Beam 5, batch 64, the de-en test set (1000 sentences), one checkpoint of each toolkit with
the same architecture (3+3 layers, 256/1024, 4 heads, shared embeddings) trained for the
same number of updates on the same data directory (benchmarks/quality.py makes both; or
give --nmtkit-checkpoint/--fairseq-checkpoint). Runs alternate between the toolkits.

    python benchmarks/generate_speed.py --quality-dir /work/bench/quality --repeats 3
    python benchmarks/generate_speed.py ... --device cuda --nmtkit-precision bf16 --fairseq-fp16

Generation time excludes start-up and model loading: every measured command is also run on
the first 8 sentences of the test set (same model, same settings; fairseq-generate fails on a
single sentence) and that time is subtracted; one discarded start-up run per toolkit warms
the file cache first.
fairseq's own "Translated ... in Xs" figure (search only, no I/O) is shown beside it.
--fixed-length N forces every hypothesis to N tokens in both toolkits, which removes the
effect of the two models translating to different lengths. Hypothesis lengths are counted the same way for both: SentencePiece pieces of the
detokenized output (without </s>), since longer translations take longer to search.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import DEFAULT_FAIRSEQ_PYTHON, NMTKIT_PYTHON, run_measured  # noqa: E402

DEFAULT_RAW = Path("/work/shared/data/de-en")


@dataclass
class Generation:
    """One generation run: wall time, fairseq's own timing, hypotheses in input order."""

    toolkit: str
    wall_s: float
    peak_memory_mb: float
    hypotheses: list[str]
    reported_s: float | None = None


def nmtkit_generate(
    checkpoint: Path,
    source: Path,
    output: Path,
    opts: argparse.Namespace,
) -> Generation:
    args = [
        f"checkpoint={checkpoint}",
        f"input={source}",
        f"output={output}",
        f"beam={opts.beam}",
        f"batch_size={opts.batch_size}",
        f"device={opts.device}",
        f"precision={opts.nmtkit_precision}",
    ]
    if opts.fixed_length:
        args += ["max_len_a=0", f"max_len_b={opts.fixed_length}", f"min_len={opts.fixed_length}"]
    result = run_measured(
        "nmtkit", NMTKIT_PYTHON, "nmtkit_cli.generate:cli_main", "nmtkit-generate", args,
        output.with_suffix(".log"),
    )  # fmt: skip
    hypotheses = output.read_text(encoding="utf-8").splitlines()
    return Generation("nmtkit", result.seconds, memory_of(result), hypotheses)


def fairseq_generate(
    checkpoint: Path,
    data: Path,
    output: Path,
    opts: argparse.Namespace,
) -> Generation:
    args = [
        str(data), "--path", str(checkpoint), "--gen-subset", "test",
        "--source-lang", "de", "--target-lang", "en",
        "--beam", str(opts.beam), "--batch-size", str(opts.batch_size),
        "--remove-bpe", "sentencepiece", "--results-path", str(output.parent / output.stem),
    ]  # fmt: skip
    if opts.fixed_length:
        args += ["--max-len-a", "0", "--max-len-b", str(opts.fixed_length)]
        args += ["--min-len", str(opts.fixed_length)]
    if opts.device == "cpu":
        args.append("--cpu")
    if opts.fairseq_fp16:
        args.append("--fp16")
    result = run_measured(
        "fairseq", opts.fairseq_python, "fairseq_cli.generate:cli_main", "fairseq-generate",
        args, output.with_suffix(".log"), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )  # fmt: skip
    # --results-path writes generate-test.txt: H-<id>\t<score>\t<text without bpe>; the
    # "Translated ... in Xs" summary goes to the console log.
    generated = (output.parent / output.stem / "generate-test.txt").read_text(encoding="utf-8")
    by_id = {}
    reported = None
    console = output.with_suffix(".log").read_text(encoding="utf-8")
    for line in generated.splitlines() + console.splitlines():
        if line.startswith("H-"):
            key, _, text = line.split("\t", 2)
            by_id[int(key[2:])] = text
        match = re.search(r"Translated [\d,]+ sentences .* in ([\d.]+)s", line)
        if match:
            reported = float(match.group(1))
    hypotheses = [by_id[i] for i in range(len(by_id))]
    output.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    return Generation("fairseq", result.seconds, memory_of(result), hypotheses, reported)


def memory_of(result) -> float:
    return result.cuda_peak_mb if result.cuda_peak_mb is not None else result.peak_rss_mb


def startup_copy(data: Path, raw: Path, work_dir: Path) -> tuple[Path, Path]:
    """The first 8 test sentences (raw, and binarized with the same dictionaries and
    SentencePiece model) for measuring start-up and model loading."""
    one = work_dir / "startup_set"
    binarized = one / "data-bin"
    if not (binarized / "test.de-en.de.idx").is_file():
        one.mkdir(parents=True, exist_ok=True)
        for lang in ("de", "en"):
            first = "\n".join((raw / f"test.{lang}").read_text(encoding="utf-8").splitlines()[:8])
            (one / f"test.{lang}").write_text(first + "\n", encoding="utf-8")
        subprocess.run(
            [
                str(NMTKIT_PYTHON.parent / "nmtkit-preprocess"),
                "source_lang=de",
                "target_lang=en",
                f"testpref={one}/test",
                f"srcdict={data}/dict.de.txt",
                f"tgtdict={data}/dict.en.txt",
                "bpe=sentencepiece",
                f"bpe_model={data}/spm.model",
                f"destdir={binarized}",
                "overwrite=true",
            ],  # fmt: skip
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return one / "test.de", binarized


def count_pieces(hypotheses: list[str], spm_model: Path) -> int:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    return sum(len(pieces) for pieces in processor.encode(hypotheses))


def run(toolkit: str, opts: argparse.Namespace, full: bool, tag: str) -> Generation:
    output = opts.work_dir / f"{toolkit}_{tag}.hyp"
    if toolkit == "nmtkit":
        source = opts.raw / "test.de" if full else opts.one_source
        return nmtkit_generate(opts.nmtkit_checkpoint, source, output, opts)
    data = opts.data if full else opts.one_data
    return fairseq_generate(opts.fairseq_checkpoint, data, output, opts)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality-dir", type=Path, default=Path("/work/bench/quality"),
                        help="work dir of benchmarks/quality.py (holds both checkpoints)")  # fmt: skip
    parser.add_argument("--nmtkit-checkpoint", type=Path)
    parser.add_argument("--fairseq-checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=Path("/work/bench/data-bin"))
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nmtkit-generate-speed"))
    parser.add_argument("--fairseq-python", type=Path, default=DEFAULT_FAIRSEQ_PYTHON)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--nmtkit-precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--fairseq-fp16", action="store_true")
    parser.add_argument("--fixed-length", type=int, default=0,
                        help="force every hypothesis to N tokens (min_len = max_len_b = N) so "
                        "both searches run the same number of steps")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    opts = parser.parse_args()
    opts.nmtkit_checkpoint = opts.nmtkit_checkpoint or (
        opts.quality_dir / "nmtkit" / "checkpoint_last.pt"
    )
    opts.fairseq_checkpoint = opts.fairseq_checkpoint or (
        opts.quality_dir / "fairseq" / "checkpoint_last.pt"
    )
    opts.data = opts.data.resolve()
    return opts


def main() -> None:
    opts = parse_args()
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    opts.one_source, opts.one_data = startup_copy(opts.data, opts.raw, opts.work_dir)
    n_sentences = len((opts.raw / "test.de").read_text(encoding="utf-8").splitlines())
    rows = []
    toolkits = ["nmtkit", "fairseq"]
    # One discarded start-up run each: the first launch after a while reads torch and the
    # toolkit from disk and takes seconds longer, which would make the subtraction negative-biased.
    for toolkit in toolkits:
        run(toolkit, opts, full=False, tag="warm_up")
    for repeat in range(opts.repeats):
        for toolkit in toolkits if repeat % 2 == 0 else toolkits[::-1]:
            startup = run(toolkit, opts, full=False, tag=f"one_{repeat}")
            full = run(toolkit, opts, full=True, tag=f"full_{repeat}")
            seconds = full.wall_s - startup.wall_s
            tokens = count_pieces(full.hypotheses, opts.data / "spm.model")
            row = {
                "toolkit": toolkit,
                "repeat": repeat,
                "wall_s": full.wall_s,
                "startup_s": startup.wall_s,
                "generate_s": seconds,
                "fairseq_reported_s": full.reported_s,
                "sentences_per_s": n_sentences / seconds,
                "tokens_per_s": tokens / seconds,
                "avg_hyp_pieces": tokens / n_sentences,
                "peak_memory_mb": full.peak_memory_mb,
            }
            rows.append(row)
            print(
                f"repeat {repeat} {toolkit:<8} generate {seconds:.1f}s (wall {full.wall_s:.1f}s"
                f" - start-up {startup.wall_s:.1f}s) {row['sentences_per_s']:.1f} sent/s, "
                f"avg hyp {row['avg_hyp_pieces']:.2f} pieces"
                + (f", fairseq's own timer {full.reported_s:.1f}s" if full.reported_s else ""),
                flush=True,
            )
    print(f"\n{'toolkit':<8} {'sent/s':>8} {'tok/s':>8} {'gen s':>7} {'start s':>8} "
          f"{'hyp len':>8} {'mem MB':>7}")  # fmt: skip
    medians = {}
    for toolkit in toolkits:
        mine = [r for r in rows if r["toolkit"] == toolkit]
        medians[toolkit] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("sentences_per_s", "tokens_per_s", "generate_s", "startup_s",
                        "avg_hyp_pieces", "peak_memory_mb")
        }  # fmt: skip
        m = medians[toolkit]
        print(
            f"{toolkit:<8} {m['sentences_per_s']:>8.1f} {m['tokens_per_s']:>8.0f} "
            f"{m['generate_s']:>7.1f} {m['startup_s']:>8.1f} {m['avg_hyp_pieces']:>8.2f} "
            f"{m['peak_memory_mb']:>7.0f}"
        )
    ratio = medians["nmtkit"]["sentences_per_s"] / medians["fairseq"]["sentences_per_s"]
    token_ratio = medians["nmtkit"]["tokens_per_s"] / medians["fairseq"]["tokens_per_s"]
    print(f"\nnmtkit/fairseq: sentences/s {ratio:.2f}x, tokens/s {token_ratio:.2f}x (medians)")
    if opts.json:
        summary = {"rows": rows, "medians": medians, "sentences_ratio": ratio,
                   "tokens_ratio": token_ratio, "device": opts.device}  # fmt: skip
        opts.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
