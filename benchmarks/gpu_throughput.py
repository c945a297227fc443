"""Throughput figures of the GPU check: training tokens/s and MFU, beam-search sentences/s,
speech training frames/s. nmtkit alone (no fairseq); benchmarks/gpu_check.sh runs this after
the CUDA tests and prints the summary.

    python benchmarks/gpu_throughput.py --device cuda --json gpu_throughput.json
    python benchmarks/gpu_throughput.py --device cpu --smoke      # tiny, for the CPU test

What runs (the full plan; --smoke shrinks every step to a few updates of tiny presets):

1. Training, `transformer_base` and `transformer_big` in `common.precision` (bf16), on
   synthetic pairs: random token ids, every source and target exactly 32 tokens (31 + </s>),
   one joined 32,768-symbol dictionary (`model.share_all_embeddings=true`),
   `dataset.max_tokens=32768` (1,024 pairs, 32,768 target tokens per update), Adam, label
   smoothing 0.1, no validation, no checkpoints. `nmtkit-train` runs in a subprocess for a
   fixed number of updates; target tokens/s is read from its `train_log.jsonl` over the log
   intervals after the warm-up updates (as benchmarks/train_speed.py does).
2. Generation: a checkpoint of `transformer_base` trained for 50 updates on the bundled
   de-en sample (examples/translation/data), then beam 5, batch 64, bf16 on its test set
   (500 sentences, repeated 8 times). Every hypothesis is forced to the test set's mean
   target length (min_len = max_len_b = L, max_len_a = 0), so the figure does not depend on
   what a barely trained model happens to output. Sentences/s is timed inside one process
   after a warm-up call on the first 8 sentences (CUDA start-up, kernel selection and the
   first model load are excluded; loading the checkpoint again is included).
3. Speech: `s2t_transformer_s` (bf16) on synthetic features: a tiny corpus is preprocessed
   with `nmtkit-preprocess task=speech_to_text` (dictionary, SentencePiece, CMVN), then its
   train split is replaced by 1,200 utterances of exactly 1,000 random 80-dim frames with
   50-token random targets, `dataset.max_tokens=40000` frames. With every utterance the same
   length, frames/s = target tokens/s x 1000 / 50.

MFU (model FLOPs utilisation) = achieved FLOP/s / peak FLOP/s (--peak-tflops, default 800,
the bf16 dense matrix-multiply peak measured on one H200). Training FLOPs per target token,
counting matrix multiplies only (2 FLOPs per multiply-add; backward = 2 x forward, so
training = 3 x forward), for S source and T target tokens per sentence (r = S / T),
widths d_e, d_d, feed-forward f_e, f_d, layers L_e, L_d, vocabulary V:

    6 x [ r x L_e x (4 d_e^2 + 2 d_e f_e)                      encoder weights
          + L_d x (4 d_d^2 + 2 d_d^2 + 2 d_d f_d)               decoder self-attn, cross q/o, FFN
          + r x L_d x 2 d_e d_d                                 cross-attention k/v of the source
          + d_d V ]                                             output projection
  + 12 x [ r x L_e x S x d_e + L_d x (T + S) x d_d ]             attention scores and values

With S = T this is the usual 6 x (non-embedding weights + output projection) plus the
attention terms (QK^T and AV over the full padded length, causal masking not discounted, as
in PaLM's MFU). Embedding look-ups, biases, LayerNorm, softmax and the loss are left out
(well under 1% here). With V = 32,768 and S = T = 32: transformer_base 368.4 MFLOP per target
token (the fairseq anchor, 400k tok/s, is 147 TFLOP/s, MFU 18%), transformer_big 1.265 GFLOP
(208k tok/s: 263 TFLOP/s, MFU 33%; the goal, 312k tok/s: 395 TFLOP/s, MFU 49%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(REPO))  # nmtkit and tests/speech_corpus.py without an install
from train_speed import nmtkit_intervals, run_measured, steady_state  # noqa: E402

from nmtkit.data.dictionary import Dictionary  # noqa: E402
from nmtkit.data.indexed_dataset import (  # noqa: E402
    IndexedDatasetBuilder,
    MMapIndexedDataset,
    best_token_dtype,
)
from nmtkit.models.transformer.config import PRESETS as TRANSFORMER_PRESETS  # noqa: E402
from nmtkit.models.transformer.config import TransformerConfig  # noqa: E402

PYTHON = Path(sys.executable)
EXAMPLE_DATA = REPO / "examples" / "translation" / "data"
SECTIONS = ("train", "generate", "s2t")

# fairseq 0.12 `--fp16` on one H200 with the same shapes (32-token pairs, max_tokens 32768):
# the recorded anchors of issue 10, and the goal for transformer_big (about half of peak).
ANCHORS = {
    "base": "fairseq 0.12 --fp16 ~400k tok/s",
    "big": "fairseq 0.12 --fp16 ~208k tok/s; goal >= 312k",
}
ANCHOR_WPS = {"base": 400e3, "big": 208e3}
GOAL_WPS = {"big": 312e3}

# Runs nmtkit-generate twice in one process: a warm-up call (CUDA start-up, kernel choice,
# first load), then the timed call. argv: warm-up args as JSON, timed args as JSON.
GENERATE_TIMER = """
import json, sys, time
import torch
from nmtkit_cli.generate import cli_main
cli_main(json.loads(sys.argv[1]))
if torch.cuda.is_available():
    torch.cuda.synchronize()
started = time.perf_counter()
cli_main(json.loads(sys.argv[2]))
if torch.cuda.is_available():
    torch.cuda.synchronize()
print("BENCH_GENERATE_SECONDS", time.perf_counter() - started, flush=True)
"""


@dataclass(kw_only=True)
class Plan:
    """How much each measurement runs: FULL on a GPU, SMOKE for the CPU test."""

    train_presets: dict[str, str]
    """Slot (base, big) -> transformer preset trained for tokens/s and MFU."""
    vocab_size: int
    """Size of the synthetic joined dictionary (specials included, a multiple of 8)."""
    sentence_length: int
    """Tokens per synthetic source and target sentence, </s> included."""
    max_tokens: int
    """dataset.max_tokens of the translation training runs."""
    train_updates: dict[str, int]
    """Updates per training run, by slot."""
    train_warmup: dict[str, int]
    """Updates left out of tokens/s, by slot."""
    train_log_interval: dict[str, int]
    """common.log_interval of the training runs, by slot."""
    num_workers: int
    """dataset.num_workers of every training run."""
    gen_preset: str
    """Transformer preset of the generation checkpoint."""
    gen_train_updates: int
    """Updates that train the generation checkpoint (its quality does not matter)."""
    gen_max_tokens: int
    """dataset.max_tokens while training the generation checkpoint."""
    gen_bpe_vocab_size: int
    """SentencePiece vocabulary of the de-en sample."""
    gen_train_lines: int
    """Training lines of the sample to preprocess (0 = all)."""
    gen_test_lines: int
    """Test sentences to translate (0 = all), before repeating."""
    gen_repeat: int
    """The test sentences are translated this many times over (one input file)."""
    gen_warmup_lines: int
    """Sentences of the untimed warm-up call."""
    gen_batch_size: int
    """nmtkit-generate batch_size."""
    s2t_preset: str
    """S2T Transformer preset of the speech run."""
    s2t_utterances: int
    """Synthetic training utterances."""
    s2t_frames: int
    """Frames per synthetic utterance (10 ms each)."""
    s2t_target_tokens: int
    """Target tokens per synthetic utterance, </s> included."""
    s2t_max_tokens: int
    """dataset.max_tokens (frames per batch) of the speech run."""
    s2t_updates: int
    """Updates of the speech run."""
    s2t_warmup: int
    """Updates left out of frames/s."""
    s2t_log_interval: int
    """common.log_interval of the speech run."""
    corpus_utterances: dict[str, int] = field(
        default_factory=lambda: {"train": 24, "valid": 4, "test": 4}
    )
    """Utterances of the tiny audio corpus preprocessed for the speech data directory."""


FULL = Plan(
    train_presets={"base": "transformer_base", "big": "transformer_big"},
    vocab_size=32768,
    sentence_length=32,
    max_tokens=32768,
    train_updates={"base": 300, "big": 200},
    train_warmup={"base": 50, "big": 40},
    train_log_interval={"base": 25, "big": 20},
    num_workers=1,
    gen_preset="transformer_base",
    gen_train_updates=50,
    gen_max_tokens=4096,
    gen_bpe_vocab_size=2000,
    gen_train_lines=0,
    gen_test_lines=0,
    gen_repeat=8,
    gen_warmup_lines=8,
    gen_batch_size=64,
    s2t_preset="s2t_transformer_s",
    s2t_utterances=1200,
    s2t_frames=1000,
    s2t_target_tokens=50,
    s2t_max_tokens=40000,
    s2t_updates=150,
    s2t_warmup=30,
    s2t_log_interval=10,
)
SMOKE = Plan(
    train_presets={"base": "transformer_tiny", "big": "transformer_tiny"},
    vocab_size=64,
    sentence_length=32,
    max_tokens=256,
    train_updates={"base": 3, "big": 3},
    train_warmup={"base": 1, "big": 1},
    train_log_interval={"base": 1, "big": 1},
    num_workers=0,
    gen_preset="transformer_tiny",
    gen_train_updates=2,
    gen_max_tokens=512,
    gen_bpe_vocab_size=100,
    gen_train_lines=400,
    gen_test_lines=8,
    gen_repeat=1,
    gen_warmup_lines=2,
    gen_batch_size=64,
    s2t_preset="s2t_transformer_tiny",
    s2t_utterances=16,
    s2t_frames=64,
    s2t_target_tokens=8,
    s2t_max_tokens=256,
    s2t_updates=3,
    s2t_warmup=1,
    s2t_log_interval=1,
)


# --------------------------------------------------------------------------------------------
# FLOPs and MFU
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingFlops:
    """Training FLOPs per target token of a transformer (module docstring's formula)."""

    matmul_weights: float
    """Weights multiplied per target token (source-side ones scaled by S / T)."""
    attention: float
    """FLOPs of attention scores and weighted values per target token (training)."""

    @property
    def per_target_token(self) -> float:
        return 6 * self.matmul_weights + self.attention


def transformer_training_flops(
    config: TransformerConfig, vocab_size: int, source_length: int, target_length: int
) -> TrainingFlops:
    """FLOPs to train one target token of `config` on sentences of the given lengths."""
    ratio = source_length / target_length
    d_e, f_e = config.encoder_embed_dim, config.encoder_ffn_embed_dim
    d_d, f_d = config.decoder_embed_dim, config.decoder_ffn_embed_dim
    layers_e, layers_d = config.encoder_layers, config.decoder_layers
    encoder = layers_e * (4 * d_e * d_e + 2 * d_e * f_e)
    decoder = layers_d * (4 * d_d * d_d + 2 * d_d * d_d + 2 * d_d * f_d)
    cross_key_value = layers_d * 2 * d_e * d_d
    weights = ratio * (encoder + cross_key_value) + decoder + d_d * vocab_size
    attention = 12 * (
        ratio * layers_e * source_length * d_e + layers_d * (target_length + source_length) * d_d
    )
    return TrainingFlops(matmul_weights=weights, attention=attention)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def synthetic_dictionary(vocab_size: int) -> Dictionary:
    dictionary = Dictionary()
    while len(dictionary) < vocab_size:
        dictionary.add_symbol(f"w{len(dictionary)}", 1)
    return dictionary


def write_token_split(
    prefix: Path, sentences: int, length: int, vocab_size: int, rng: np.random.Generator
) -> None:
    """`sentences` items of `length` random ids (specials excluded), each ending in </s>."""
    special = Dictionary()  # ids 0-3: <s> <pad> </s> <unk> in every dictionary
    tokens = rng.integers(special.num_special, vocab_size, size=(sentences, length))
    tokens[:, -1] = special.eos()
    builder = IndexedDatasetBuilder(prefix, best_token_dtype(vocab_size))
    builder.add_items(tokens.reshape(-1), np.full(sentences, length, dtype=np.int32))
    builder.finalize()


def write_synthetic_translation_data(folder: Path, plan: Plan, sentences: int) -> None:
    """A fairseq-layout data directory (languages src/tgt, one joined dictionary): train and
    valid splits of fixed-length random sentences."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    dictionary = synthetic_dictionary(plan.vocab_size)
    rng = np.random.default_rng(1)
    for lang in ("src", "tgt"):
        dictionary.save(folder / f"dict.{lang}.txt")
        for split, count in (("train", sentences), ("valid", 64)):
            prefix = folder / f"{split}.src-tgt.{lang}"
            write_token_split(prefix, count, plan.sentence_length, plan.vocab_size, rng)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------
def child_env(opts: argparse.Namespace) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
        env["MKL_NUM_THREADS"] = str(opts.threads)
    return env


def run_module(module: str, args: list[str], log_path: Path, opts: argparse.Namespace) -> None:
    """Runs `python -m module args`, output to `log_path`; raises with the log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        result = subprocess.run(
            [str(PYTHON), "-m", module, *args], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **child_env(opts)}, cwd=REPO,
        )  # fmt: skip
    if result.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{module} failed (exit {result.returncode}), log {log_path}:\n{tail}")


def common_train_args(opts: argparse.Namespace, save_dir: Path, updates: int) -> list[str]:
    return [
        "criterion=label_smoothed_cross_entropy",
        "criterion.label_smoothing=0.1",
        "optimizer=adam",
        "optimizer.lr=5e-4",
        "optimizer.betas=[0.9,0.98]",
        "lr_scheduler=inverse_sqrt",
        "lr_scheduler.warmup_updates=4000",
        f"optimization.max_update={updates}",
        "dataset.disable_validation=true",
        f"checkpoint.save_dir={save_dir}",
        f"common.device={opts.device}",
        f"common.precision={opts.precision}",
        "common.log_format=simple",
        "common.seed=1",
    ]


def measure_translation_training(
    slot: str, data: Path, plan: Plan, opts: argparse.Namespace
) -> dict[str, Any]:
    preset = plan.train_presets[slot]
    run_dir = opts.work_dir / f"train_{slot}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    args = [
        "task=translation",
        f"task.data={data}",
        f"model={preset}",
        "model.share_all_embeddings=true",
        f"dataset.max_tokens={plan.max_tokens}",
        f"dataset.num_workers={plan.num_workers}",
        f"common.log_interval={plan.train_log_interval[slot]}",
        "checkpoint.no_save=true",
        *common_train_args(opts, run_dir, plan.train_updates[slot]),
    ]
    result = run_measured(
        "nmtkit", PYTHON, "nmtkit_cli.train:cli_main", "nmtkit-train", args,
        run_dir / "stdout.log", env=child_env(opts),
    )  # fmt: skip
    steady = steady_state(nmtkit_intervals(run_dir), plan.train_warmup[slot])
    flops = transformer_training_flops(
        TRANSFORMER_PRESETS[preset](), plan.vocab_size, plan.sentence_length, plan.sentence_length
    )
    achieved = steady["wps"] * flops.per_target_token
    return {
        "preset": preset,
        "target_tokens_per_s": steady["wps"],
        "target_tokens_per_update": steady["wpb"],
        "s_per_update": steady["sec_per_update"],
        "measured_updates": steady["measured_updates"],
        "flops_per_target_token": flops.per_target_token,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (opts.peak_tflops * 1e12),
        "peak_memory_mb": result.cuda_peak_mb,
        "wall_s": result.seconds,
        "final_loss": steady["final_loss"],
        "env": read_env(run_dir),
    }


def read_env(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "env.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return {k: record.get(k) for k in ("torch", "cuda", "devices", "python")}


def measure_generation(plan: Plan, opts: argparse.Namespace) -> dict[str, Any]:
    work = opts.work_dir / "generate"
    if work.exists():
        shutil.rmtree(work)
    raw = work / "raw"
    raw.mkdir(parents=True)
    for split, limit in (("train", plan.gen_train_lines), ("valid", 0), ("test", 0)):
        for lang in ("de", "en"):
            lines = (opts.de_en / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            kept = lines[:limit] if limit else lines
            (raw / f"{split}.{lang}").write_text("".join(f"{x}\n" for x in kept), encoding="utf-8")
    data = work / "data-bin"
    run_module(
        "nmtkit_cli.preprocess",
        [
            "source_lang=de", "target_lang=en", f"trainpref={raw}/train",
            f"validpref={raw}/valid", f"testpref={raw}/test", f"destdir={data}",
            "bpe=sentencepiece", f"bpe_vocab_size={plan.gen_bpe_vocab_size}",
            "joined_dictionary=true", f"workers={opts.workers}",
        ],
        work / "preprocess.log", opts,
    )  # fmt: skip
    save_dir = work / "checkpoints"
    run_module(
        "nmtkit_cli.train",
        [
            "task=translation", f"task.data={data}", f"model={plan.gen_preset}",
            "model.share_all_embeddings=true", f"dataset.max_tokens={plan.gen_max_tokens}",
            "checkpoint.no_epoch_checkpoints=true", "common.log_interval=10",
            *common_train_args(opts, save_dir, plan.gen_train_updates),
        ],
        work / "train.log", opts,
    )  # fmt: skip
    # Forced length: the test set's mean target length in pieces (without </s>).
    target_sizes = MMapIndexedDataset(data / "test.de-en.en").sizes
    length = max(1, round(float(np.mean(target_sizes)) - 1))
    sentences = (opts.de_en / "test.de").read_text(encoding="utf-8").splitlines()
    if plan.gen_test_lines:
        sentences = sentences[: plan.gen_test_lines]
    timed_input, warmup_input = work / "input.de", work / "warmup.de"
    timed_input.write_text("".join(f"{s}\n" for s in sentences * plan.gen_repeat), "utf-8")
    warmup_input.write_text("".join(f"{s}\n" for s in sentences[: plan.gen_warmup_lines]), "utf-8")

    def generate_args(source: Path, output: Path) -> list[str]:
        return [
            f"checkpoint={save_dir / 'checkpoint_last.pt'}", f"input={source}",
            f"output={output}", "beam=5", f"batch_size={plan.gen_batch_size}",
            f"device={opts.device}", f"precision={opts.precision}", "max_len_a=0",
            f"max_len_b={length}", f"min_len={length}",
        ]  # fmt: skip

    log_path = work / "generate.log"
    with open(log_path, "w") as log:
        result = subprocess.run(
            [str(PYTHON), "-c", GENERATE_TIMER,
             json.dumps(generate_args(warmup_input, work / "warmup.en")),
             json.dumps(generate_args(timed_input, work / "hyp.en"))],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **child_env(opts)}, cwd=REPO,
        )  # fmt: skip
    text = log_path.read_text()
    if result.returncode != 0:
        tail = "".join(text.splitlines(keepends=True)[-20:])
        raise RuntimeError(f"generation failed (exit {result.returncode}), log {log_path}:\n{tail}")
    seconds = next(
        float(line.split()[1]) for line in text.splitlines() if line.startswith("BENCH_GENERATE")
    )
    count = len(sentences) * plan.gen_repeat
    written = len((work / "hyp.en").read_text(encoding="utf-8").splitlines())
    if written != count:
        raise RuntimeError(f"generation wrote {written} lines for {count} inputs ({work})")
    return {
        "preset": plan.gen_preset,
        "sentences": count,
        "hypothesis_tokens": length,
        "seconds": seconds,
        "sentences_per_s": count / seconds,
        "tokens_per_s": count * (length + 1) / seconds,
        "beam": 5,
        "batch_size": plan.gen_batch_size,
    }


def measure_speech_training(plan: Plan, opts: argparse.Namespace) -> dict[str, Any]:
    from tests.speech_corpus import write_speech_corpus  # needs soundfile: imported on use

    work = opts.work_dir / "s2t"
    if work.exists():
        shutil.rmtree(work)
    manifests = write_speech_corpus(work / "corpus", plan.corpus_utterances, seed=1)
    data = work / "data"
    run_module(
        "nmtkit_cli.preprocess",
        [
            "task=speech_to_text", f"train={manifests['train']}", f"valid={manifests['valid']}",
            f"test={manifests['test']}", "target=src_text", "bpe_vocab_size=24",
            f"destdir={data}", f"workers={opts.workers}",
        ],
        work / "preprocess.log", opts,
    )  # fmt: skip
    write_synthetic_speech_split(data, plan)
    run_dir = work / "run"
    args = [
        "task=speech_to_text",
        f"task.data={data}",
        f"model={plan.s2t_preset}",
        f"dataset.max_tokens={plan.s2t_max_tokens}",
        f"dataset.num_workers={plan.num_workers}",
        f"common.log_interval={plan.s2t_log_interval}",
        "checkpoint.no_save=true",
        *common_train_args(opts, run_dir, plan.s2t_updates),
    ]
    result = run_measured(
        "nmtkit", PYTHON, "nmtkit_cli.train:cli_main", "nmtkit-train", args,
        run_dir / "stdout.log", env=child_env(opts),
    )  # fmt: skip
    steady = steady_state(nmtkit_intervals(run_dir), plan.s2t_warmup)
    # Every utterance has s2t_frames frames and s2t_target_tokens target tokens.
    frames_per_s = steady["wps"] * plan.s2t_frames / plan.s2t_target_tokens
    return {
        "preset": plan.s2t_preset,
        "frames_per_s": frames_per_s,
        "target_tokens_per_s": steady["wps"],
        "frames_per_update": steady["wpb"] * plan.s2t_frames / plan.s2t_target_tokens,
        "s_per_update": steady["sec_per_update"],
        "measured_updates": steady["measured_updates"],
        "peak_memory_mb": result.cuda_peak_mb,
        "wall_s": result.seconds,
    }


def write_synthetic_speech_split(data: Path, plan: Plan) -> None:
    """Replaces the preprocessed train split with fixed-size random features and targets
    (the dictionary, SentencePiece model and CMVN of the real preprocessing stay)."""
    manifest = json.loads((data / "preprocess.json").read_text(encoding="utf-8"))
    dictionary = Dictionary.load(data / manifest["target_dict"])
    num_mel_bins = int(manifest["features"].get("num_mel_bins", 80))
    rng = np.random.default_rng(2)
    utterances = plan.s2t_utterances
    features = IndexedDatasetBuilder(data / "train.fbank", np.float16)
    chunk = 64  # utterances generated at a time: bounded memory for any plan
    for start in range(0, utterances, chunk):
        count = min(chunk, utterances - start)
        values = rng.standard_normal((count, plan.s2t_frames * num_mel_bins), dtype=np.float32)
        features.add_items(
            values.astype(np.float16).reshape(-1),
            np.full(count, plan.s2t_frames * num_mel_bins, dtype=np.int32),
        )
    features.finalize()
    write_token_split(
        data / "train.target", utterances, plan.s2t_target_tokens, len(dictionary), rng
    )
    ids = "".join(f"synthetic_{i:06d}\n" for i in range(utterances))
    (data / "train.ids.txt").write_text(ids, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def thousands(value: float) -> str:
    return f"{value:,.0f}"


def train_line(slot: str, figures: dict[str, Any], opts: argparse.Namespace) -> str:
    wps = figures["target_tokens_per_s"]
    line = f"{'train ' + slot:<12}: {figures['preset']} {opts.precision}  {thousands(wps)} target tok/s  "
    if opts.device.startswith("cuda"):
        line += (
            f"MFU {100 * figures['mfu']:.1f}% ({figures['achieved_tflops']:.1f} of "
            f"{opts.peak_tflops:g} TFLOP/s)"
        )
    else:
        line += f"MFU n/a on {opts.device} ({figures['achieved_tflops']:.3f} TFLOP/s)"
    if figures["peak_memory_mb"] is not None:
        line += f"  peak mem {figures['peak_memory_mb'] / 1024:.1f} GiB"
    line += f"  | {ANCHORS[slot]}"
    if opts.device.startswith("cuda") and not opts.smoke:
        line += f" -> {wps / ANCHOR_WPS[slot]:.2f}x fairseq"
        if slot in GOAL_WPS:
            line += ", goal met" if wps >= GOAL_WPS[slot] else ", goal NOT met"
    return line


def summary_lines(
    results: dict[str, Any], failures: dict[str, str], opts: argparse.Namespace
) -> list[str]:
    plan = SMOKE if opts.smoke else FULL
    lines = []
    mode = "smoke (tiny presets, figures meaningless)" if opts.smoke else "full"
    lines.append(f"device      : {describe_device(opts.device)}, {opts.precision}, {mode}")
    for slot in plan.train_presets:
        key = f"train.{slot}"
        if key in failures:
            lines.append(f"{'train ' + slot:<12}: FAILED: {failures[key]}")
        elif slot in results.get("train", {}):
            lines.append(train_line(slot, results["train"][slot], opts))
        else:
            lines.append(f"{'train ' + slot:<12}: not run")
    if "generate" in failures:
        lines.append(f"generate    : FAILED: {failures['generate']}")
    elif "generate" in results:
        g = results["generate"]
        lines.append(
            f"generate    : {g['preset']} beam 5 {opts.precision}  "
            f"{g['sentences_per_s']:,.1f} sentences/s  ({g['sentences']} de-en test sentences, "
            f"{g['hypothesis_tokens']} tokens each, batch {g['batch_size']}, "
            f"{thousands(g['tokens_per_s'])} tok/s)"
        )
    else:
        lines.append("generate    : not run")
    if "s2t" in failures:
        lines.append(f"s2t train   : FAILED: {failures['s2t']}")
    elif "s2t" in results:
        s = results["s2t"]
        lines.append(
            f"s2t train   : {s['preset']} {opts.precision}  {thousands(s['frames_per_s'])} "
            f"frames/s  ({plan.s2t_frames}-frame synthetic utterances, "
            f"{plan.s2t_max_tokens} frames/batch, {thousands(s['target_tokens_per_s'])} "
            "target tok/s)"
        )
    else:
        lines.append("s2t train   : not run")
    return lines


def describe_device(device: str) -> str:
    """Device name and versions, asked once every run has ended (so this process never holds
    GPU memory while the measured runs need it)."""
    import torch

    name = device
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def one_line(error: BaseException) -> str:
    """The error's first line, and its last one when they differ (a failed run's message
    ends with the last line of its log, usually the reason)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    return f"{type(error).__name__}: {text}"[:300]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny presets and a few updates (the CPU test)")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=800.0,
                        help="peak FLOP/s of the device for MFU (H200 bf16: 800)")  # fmt: skip
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run: {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nmtkit-gpu-check"))
    parser.add_argument("--de-en", type=Path, default=EXAMPLE_DATA,
                        help="raw de-en corpus for generation: train/valid/test.{de,en}")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0,
                        help="preprocessing workers (0: 1 with --smoke, else 4)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP/MKL threads of the runs (0: 1 with --smoke, else default)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--summary", type=Path, help="write the summary lines here")
    opts = parser.parse_args(argv)
    unknown = set(opts.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {', '.join(sorted(unknown))}")
    opts.work_dir = opts.work_dir.resolve()
    opts.workers = opts.workers or (1 if opts.smoke else 4)
    opts.threads = opts.threads or (1 if opts.smoke else 0)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    plan = SMOKE if opts.smoke else FULL
    sections = opts.only.split(",")
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}

    def attempt(key: str, measure: Any) -> Any:
        started = time.monotonic()
        print(f"[gpu_throughput] {key} ...", flush=True)
        try:
            value = measure()
        except Exception as error:  # report every section, whichever fails
            traceback.print_exc()
            failures[key] = one_line(error)
            print(f"[gpu_throughput] {key} FAILED after {time.monotonic() - started:.0f}s",
                  flush=True)  # fmt: skip
            return None
        print(f"[gpu_throughput] {key} done in {time.monotonic() - started:.0f}s", flush=True)
        return value

    if "train" in sections:
        data = opts.work_dir / "synthetic-bin"
        # One epoch covers the longest run: batches never straddle an epoch boundary.
        per_batch = plan.max_tokens // plan.sentence_length
        sentences = (max(plan.train_updates.values()) + 8) * per_batch
        attempt("synthetic data", lambda: write_synthetic_translation_data(data, plan, sentences))
        results["train"] = {}
        for slot in plan.train_presets:
            figures = attempt(
                f"train.{slot}", lambda s=slot: measure_translation_training(s, data, plan, opts)
            )
            if figures is not None:
                results["train"][slot] = figures
    if "generate" in sections:
        figures = attempt("generate", lambda: measure_generation(plan, opts))
        if figures is not None:
            results["generate"] = figures
    if "s2t" in sections:
        figures = attempt("s2t", lambda: measure_speech_training(plan, opts))
        if figures is not None:
            results["s2t"] = figures

    lines = summary_lines(results, failures, opts)
    print("\n".join(lines), flush=True)
    if opts.summary:
        opts.summary.write_text("\n".join(lines) + "\n")
    if opts.json:
        record = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
            "results": results,
            "failures": failures,
        }
        opts.json.write_text(json.dumps(record, indent=2, default=float) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
