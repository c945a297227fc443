"""CPU translation speed of the CTranslate2 export against nmtkit-generate and fairseq-generate.

One model for every engine: an nmtkit transformer_small (3+3 layers, 256/1024, 4 heads, shared
embeddings; the size of generate_speed.py's models) trained for --updates updates on the de-en
data directory (or --nmtkit-checkpoint); its weights copied into a fairseq checkpoint (the one a
1-update fairseq-train run writes, weights replaced, so fairseq loads it as its own); and
exported with `nmtkit-export format=ctranslate2` in float32 and int8. Every engine then
translates the same de-en test sentences with beam 5, batch 64, lenpen 1, at most 200 tokens,
on --threads CPU threads (OMP_NUM_THREADS for PyTorch, intra_threads for CTranslate2):

    fairseq fp32    fairseq-generate --cpu
    nmtkit fp32     nmtkit-generate device=cpu precision=fp32
    nmtkit bf16     nmtkit-generate device=cpu precision=bf16
    ct2 float32     ctranslate2.Translator on the float32 export (SentencePiece pieces in/out)
    ct2 int8        the same on the int8 export

    python benchmarks/ctranslate2_speed.py --updates 200 --repeats 2
    python benchmarks/ctranslate2_speed.py --nmtkit-checkpoint ckpt.pt --fixed-length 8

--fixed-length N makes every engine run the same number of decoder steps whatever the model
says (a briefly trained model can stop too early or never): N tokens then the forced </s> in
nmtkit and fairseq, N + 1 tokens in CTranslate2 (which has no forced end step).

Start-up and model loading are excluded as in generate_speed.py: each measured command also
runs on the first 8 sentences and that time is subtracted; one discarded start-up run per
engine warms the file cache. Runs rotate the engine order every repeat; the table shows
medians, the ratio to fairseq fp32, BLEU against the references (sacreBLEU), and how many
hypotheses equal nmtkit fp32's. Needs ctranslate2 in nmtkit's Python and fairseq in
--fairseq-python.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from generate_speed import (  # noqa: E402
    Generation,
    count_pieces,
    fairseq_generate,
    memory_of,
    nmtkit_generate,
)
from train_speed import (  # noqa: E402
    DEFAULT_FAIRSEQ_PYTHON,
    DEFAULT_RAW,
    NMTKIT_PYTHON,
    ensure_data,
    fairseq_train_args,
    nmtkit_train_args,
    run_measured,
)

ENGINES = ("fairseq fp32", "nmtkit fp32", "nmtkit bf16", "ct2 float32", "ct2 int8")
STARTUP_SENTENCES = 8


# --------------------------------------------------------------------------------------------
# Runs in a subprocess with nmtkit's Python: CTranslate2 translation of a raw text file.
# --------------------------------------------------------------------------------------------
def ctranslate2_translate_cli() -> None:
    """ct2-translate MODEL_DIR INPUT OUTPUT BEAM BATCH THREADS FIXED_LENGTH: what the export's
    README shows, with nmtkit-generate's defaults (lenpen 1.0, at most 200 tokens); with
    FIXED_LENGTH N > 0, every hypothesis gets N tokens and no end token."""
    import ctranslate2
    import sentencepiece

    model_dir, source, output, beam, batch_size, threads, fixed_length = sys.argv[1:]
    lengths = {"max_decoding_length": 200}
    if int(fixed_length) > 0:
        lengths = {
            "min_decoding_length": int(fixed_length),
            "max_decoding_length": int(fixed_length),
        }
    folder = Path(model_dir)
    names = json.loads((folder / "nmtkit.json").read_text())["sentencepiece"]
    source_spm = sentencepiece.SentencePieceProcessor(model_file=str(folder / names["source"]))
    target_spm = sentencepiece.SentencePieceProcessor(model_file=str(folder / names["target"]))
    translator = ctranslate2.Translator(
        model_dir, device="cpu", inter_threads=1, intra_threads=int(threads)
    )
    lines = Path(source).read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    pieces = source_spm.encode([line.strip() for line in lines], out_type=str)
    results = translator.translate_batch(
        pieces,
        max_batch_size=int(batch_size),
        beam_size=int(beam),
        length_penalty=1.0,
        **lengths,
    )
    hypotheses = [target_spm.decode(result.hypotheses[0]) for result in results]
    seconds = time.perf_counter() - started
    tokens = sum(len(result.hypotheses[0]) + 1 for result in results)  # </s> counted, as fairseq
    print(f"Translated {len(lines):,} sentences ({tokens:,} tokens) in {seconds:.2f}s")
    Path(output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Runs with the fairseq venv's Python: nmtkit weights into a fairseq checkpoint.
# --------------------------------------------------------------------------------------------
def copy_weights_into_fairseq(nmtkit_checkpoint: Path, template: Path, output: Path) -> None:
    """Replaces every weight of fairseq checkpoint `template` by nmtkit's: nmtkit fuses the
    q/k/v (self-attention) and k/v (encoder attention) projections row-wise and names the
    feed-forward layers ffn.fc1/ffn.fc2; the rest is named as in fairseq."""
    import torch

    nmtkit_state = torch.load(nmtkit_checkpoint, map_location="cpu", weights_only=True)["model"]
    converted = {}
    for key, value in nmtkit_state.items():
        if ".qkv_proj." in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[key.replace("qkv_proj", name)] = part
        elif ".kv_proj." in key:
            for name, part in zip(("k_proj", "v_proj"), value.chunk(2, dim=0)):
                converted[key.replace("kv_proj", name)] = part
        else:
            converted[key.replace(".ffn.", ".")] = value
    state = torch.load(template, map_location="cpu", weights_only=False)
    model = state["model"]
    unused = set(converted) - set(model)
    if unused:
        raise SystemExit(f"nmtkit weights without a fairseq place: {sorted(unused)}")
    for key, value in model.items():
        if key in converted:
            if converted[key].shape != value.shape:
                raise SystemExit(f"{key}: nmtkit {converted[key].shape}, fairseq {value.shape}")
            model[key] = converted[key].to(value.dtype).clone()
        elif not key.endswith(("_float_tensor", ".version")):
            raise SystemExit(f"fairseq weight {key} has no nmtkit counterpart")
    state["last_optimizer_state"] = None  # the template's 1-update optimizer means nothing here
    torch.save(state, output)


# --------------------------------------------------------------------------------------------
# Preparation: data, checkpoints, exports, test subsets.
# --------------------------------------------------------------------------------------------
def prepare_checkpoints(opts: argparse.Namespace) -> None:
    """nmtkit checkpoint (trained unless given), the fairseq copy, the two CTranslate2 exports."""
    work = opts.work_dir
    if opts.nmtkit_checkpoint is None:
        save_dir = work / "nmtkit"
        opts.nmtkit_checkpoint = save_dir / "checkpoint_last.pt"
        if not opts.nmtkit_checkpoint.is_file():
            args = nmtkit_train_args(
                opts.data, save_dir, opts.updates, 4096, "cpu", "fp32", 50, save=True
            )
            # A short run learns more with a higher peak learning rate reached sooner.
            args = [a for a in args if not a.startswith(("optimizer.lr=", "lr_scheduler.warmup"))]
            args += [f"optimizer.lr={opts.lr}", f"lr_scheduler.warmup_updates={opts.warmup}"]
            result = run_measured(
                "nmtkit", NMTKIT_PYTHON, "nmtkit_cli.train:cli_main", "nmtkit-train",
                [*args, "checkpoint.no_epoch_checkpoints=true"], save_dir / "stdout.log",
            )  # fmt: skip
            print(f"trained nmtkit for {opts.updates} updates in {result.seconds:.0f}s", flush=True)
    opts.fairseq_checkpoint = work / "fairseq_copy.pt"
    if not opts.fairseq_checkpoint.is_file():
        template_dir = work / "fairseq_template"
        args = fairseq_train_args(opts.data, template_dir, 1, 1024, "cpu", "fp32", 1, save=True)
        run_measured(
            "fairseq", opts.fairseq_python, "fairseq_cli.train:cli_main", "fairseq-train", args,
            template_dir / "stdout.log", env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
        )  # fmt: skip
        subprocess.run(
            [str(opts.fairseq_python), __file__, "--copy-weights-into-fairseq",
             str(opts.nmtkit_checkpoint), str(template_dir / "checkpoint_last.pt"),
             str(opts.fairseq_checkpoint)],
            check=True,
        )  # fmt: skip
    opts.ct2_dirs = {}
    for quantization in ("float32", "int8"):
        folder = work / f"ct2_{quantization}"
        if not (folder / "model.bin").is_file():
            subprocess.run(
                [str(NMTKIT_PYTHON.parent / "nmtkit-export"), f"checkpoint={opts.nmtkit_checkpoint}",
                 "format=ctranslate2", f"quantization={quantization}", f"output={folder}"],
                check=True,
            )  # fmt: skip
        opts.ct2_dirs[quantization] = folder


def test_subset(opts: argparse.Namespace, count: int, name: str) -> tuple[Path, Path, Path]:
    """The first `count` test pairs: raw source, raw reference, and a binarized copy (same
    dictionaries and SentencePiece model) for fairseq-generate."""
    folder = opts.work_dir / name
    binarized = folder / "data-bin"
    if not (binarized / "test.de-en.de.idx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for lang in ("de", "en"):
            lines = (opts.raw / f"test.{lang}").read_text(encoding="utf-8").splitlines()[:count]
            (folder / f"test.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        subprocess.run(
            [str(NMTKIT_PYTHON.parent / "nmtkit-preprocess"), "source_lang=de", "target_lang=en",
             f"testpref={folder}/test", f"srcdict={opts.data}/dict.de.txt",
             f"tgtdict={opts.data}/dict.en.txt", "bpe=sentencepiece",
             f"bpe_model={opts.data}/spm.model", f"destdir={binarized}", "overwrite=true"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return folder / "test.de", folder / "test.en", binarized


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def run_engine(
    engine: str, opts: argparse.Namespace, source: Path, binarized: Path, tag: str
) -> Generation:
    output = opts.work_dir / "runs" / f"{engine.replace(' ', '_')}_{tag}.hyp"
    output.parent.mkdir(parents=True, exist_ok=True)
    if engine.startswith("nmtkit"):
        settings = copy.copy(opts)
        settings.nmtkit_precision = engine.split()[1]
        return nmtkit_generate(opts.nmtkit_checkpoint, source, output, settings)
    if engine.startswith("fairseq"):
        return fairseq_generate(opts.fairseq_checkpoint, binarized, output, opts)
    model_dir = opts.ct2_dirs[engine.split()[1]]
    result = run_measured(
        "ct2", NMTKIT_PYTHON, "ctranslate2_speed:ctranslate2_translate_cli", "ct2-translate",
        [str(model_dir), str(source), str(output), str(opts.beam), str(opts.batch_size),
         str(opts.threads), str(opts.fixed_length + 1 if opts.fixed_length else 0)],
        output.with_suffix(".log"), env={"PYTHONPATH": str(BENCHMARKS)},
    )  # fmt: skip
    hypotheses = output.read_text(encoding="utf-8").splitlines()
    return Generation("ct2", result.seconds, memory_of(result), hypotheses)


def own_timer_seconds(engine: str, opts: argparse.Namespace, tag: str) -> float | None:
    """The engine's own "Translated N sentences ... in Xs" figure (decoding only: fairseq's
    search timer, nmtkit-generate's summary, the CTranslate2 script's translate_batch call)."""
    log = opts.work_dir / "runs" / f"{engine.replace(' ', '_')}_{tag}.log"
    found = None
    for line in log.read_text(encoding="utf-8").splitlines():
        match = re.search(r"Translated [\d,]+ sentences .* in ([\d.]+)s", line)
        if match:
            found = float(match.group(1))
    return found


def bleu(hypotheses: list[str], reference: Path) -> float:
    import sacrebleu

    references = reference.read_text(encoding="utf-8").splitlines()
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/bench/data-bin"),
                        help="de-en data directory (made from --raw when missing)")  # fmt: skip
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nmtkit-ctranslate2-speed"))
    parser.add_argument("--nmtkit-checkpoint", type=Path,
                        help="translate with this transformer_small checkpoint instead of "
                        "training one")  # fmt: skip
    parser.add_argument("--updates", type=int, default=300,
                        help="training updates when no --nmtkit-checkpoint is given")  # fmt: skip
    parser.add_argument("--lr", type=float, default=1e-3, help="training peak learning rate")
    parser.add_argument("--warmup", type=int, default=100, help="training warm-up updates")
    parser.add_argument("--fairseq-python", type=Path, default=DEFAULT_FAIRSEQ_PYTHON)
    parser.add_argument("--limit", type=int, default=0,
                        help="translate the first N test sentences (0 = all 1000)")  # fmt: skip
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated subset of: " + ", ".join(ENGINES))  # fmt: skip
    parser.add_argument("--fixed-length", type=int, default=0,
                        help="every hypothesis N tokens (nmtkit/fairseq: min_len = max_len_b = "
                        "N, then the forced </s> step; CTranslate2: N + 1 steps), so all "
                        "engines run the same number of decoder steps whatever the model")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    opts = parser.parse_args()
    opts.data = opts.data.resolve()
    opts.device, opts.fairseq_fp16 = "cpu", False
    opts.engines = [name.strip() for name in opts.engines.split(",")]
    unknown = [name for name in opts.engines if name not in ENGINES]
    if unknown or "fairseq fp32" not in opts.engines:
        parser.error(f"--engines: need 'fairseq fp32' and names from {ENGINES}, got {unknown}")
    return opts


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--copy-weights-into-fairseq":
        copy_weights_into_fairseq(*map(Path, sys.argv[2:]))
        return
    opts = parse_args()
    # Every engine gets the same number of threads; children inherit these.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(opts.threads)
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    ensure_data(opts.data, opts.raw)
    prepare_checkpoints(opts)
    total = len((opts.raw / "test.de").read_text(encoding="utf-8").splitlines())
    count = min(opts.limit or total, total)
    # fairseq-generate 0.12 returned 296 hypotheses for 300 sentences here (the 4 longest
    # missing: its batching rounds to multiples of 8), so subsets are cut to a multiple of 8.
    count = max(count - count % 8, 8)
    source, reference, binarized = test_subset(opts, count, f"test_{count}")
    one_source, _, one_binarized = test_subset(opts, STARTUP_SENTENCES, "startup_set")

    for engine in opts.engines:  # discarded: warms the file cache
        run_engine(engine, opts, one_source, one_binarized, "warm_up")
    rows = []
    for repeat in range(opts.repeats):
        shift = repeat % len(opts.engines)
        for engine in opts.engines[shift:] + opts.engines[:shift]:
            startup = run_engine(engine, opts, one_source, one_binarized, f"one_{repeat}")
            full = run_engine(engine, opts, source, binarized, f"full_{repeat}")
            seconds = full.wall_s - startup.wall_s
            own = full.reported_s or own_timer_seconds(engine, opts, f"full_{repeat}")
            tokens = count_pieces(full.hypotheses, opts.data / "spm.model")
            rows.append({
                "engine": engine, "repeat": repeat, "generate_s": seconds,
                "startup_s": startup.wall_s, "sentences_per_s": count / seconds,
                "own_timer_s": own, "own_timer_sentences_per_s": count / own if own else None,
                "tokens_per_s": tokens / seconds, "avg_hyp_pieces": tokens / count,
                "peak_memory_mb": full.peak_memory_mb, "hypotheses": full.hypotheses,
            })  # fmt: skip
            print(f"repeat {repeat} {engine:<13} {seconds:6.1f}s (start-up {startup.wall_s:.1f}s) "
                  f"{count / seconds:6.1f} sent/s; own timer {own}s", flush=True)  # fmt: skip

    reference_hypotheses = next(
        (r["hypotheses"] for r in rows if r["engine"] == "nmtkit fp32"), None
    )
    summary = {}
    for engine in opts.engines:
        mine = [r for r in rows if r["engine"] == engine]
        summary[engine] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("sentences_per_s", "tokens_per_s", "generate_s", "startup_s",
                        "avg_hyp_pieces", "peak_memory_mb", "own_timer_sentences_per_s")
            if all(r[key] is not None for r in mine)
        }  # fmt: skip
        hypotheses = mine[0]["hypotheses"]
        summary[engine]["bleu"] = bleu(hypotheses, reference)
        if reference_hypotheses is not None:
            # Whitespace normalised: fairseq strips what SentencePiece decoding leaves at the
            # end of a line, nmtkit and CTranslate2 keep it.
            same = sum(a.split() == b.split() for a, b in zip(hypotheses, reference_hypotheses))
            summary[engine]["same_as_nmtkit_fp32"] = same / count
    baseline = summary["fairseq fp32"]
    print(f"\n{count} sentences, beam {opts.beam}, batch {opts.batch_size}, "
          f"{opts.threads} threads, medians of {opts.repeats}")  # fmt: skip
    print(f"{'engine':<13} {'sent/s':>7} {'vs fairseq':>10} {'own timer':>9} {'vs fairseq':>10} "
          f"{'tok/s':>7} {'hyp len':>7} {'BLEU':>6} {'= nmtkit fp32':>13} {'start s':>7} "
          f"{'RSS MB':>7}")  # fmt: skip
    for engine, m in summary.items():
        m["vs_fairseq_fp32"] = m["sentences_per_s"] / baseline["sentences_per_s"]
        own = m.get("own_timer_sentences_per_s")
        own_base = baseline.get("own_timer_sentences_per_s")
        if own and own_base:
            m["own_timer_vs_fairseq_fp32"] = own / own_base
        same = m.get("same_as_nmtkit_fp32")
        own_text = f"{own:.1f}" if own else "-"
        own_ratio = f"{m['own_timer_vs_fairseq_fp32']:.2f}x" if own and own_base else "-"
        print(f"{engine:<13} {m['sentences_per_s']:>7.1f} {m['vs_fairseq_fp32']:>9.2f}x "
              f"{own_text:>9} {own_ratio:>10} {m['tokens_per_s']:>7.0f} "
              f"{m['avg_hyp_pieces']:>7.2f} {m['bleu']:>6.2f} "
              f"{'' if same is None else f'{100 * same:.1f}%':>13} {m['startup_s']:>7.1f} "
              f"{m['peak_memory_mb']:>7.0f}")  # fmt: skip
    if opts.json:
        for row in rows:
            row.pop("hypotheses")
        result = {"sentences": count, "threads": opts.threads, "beam": opts.beam,
                  "batch_size": opts.batch_size, "rows": rows, "summary": summary}  # fmt: skip
        opts.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
