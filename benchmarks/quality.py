"""Translation quality: nmtkit and fairseq trained with the same hyperparameters and number of
updates on the same data directory, each decoded with beam 5 from its last checkpoint and
scored with sacreBLEU (nmtkit-score) on detokenized output.

    nohup python benchmarks/quality.py --updates 300 --work-dir /work/bench/quality \\
        > /work/bench/quality.log 2>&1 &

Model: 3+3 layers, 256/1024, 4 heads, shared embeddings, dropout 0.1; label smoothing 0.1;
Adam (0.9, 0.98), lr 7e-4, inverse_sqrt with 1000 warm-up updates; max_tokens 4096; seed 1;
no validation. The trainings run one after the other (never in parallel). fairseq output is
detokenized with --remove-bpe sentencepiece; nmtkit-generate detokenizes with the same
SentencePiece model (it travels in the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_speed import fairseq_generate, nmtkit_generate  # noqa: E402
from train_speed import (  # noqa: E402
    DEFAULT_FAIRSEQ_PYTHON,
    DEFAULT_RAW,
    NMTKIT_PYTHON,
    ensure_data,
    fairseq_train_args,
    nmtkit_train_args,  # noqa: E402
    run_measured,
)


def train(toolkit: str, opts: argparse.Namespace) -> float:
    save_dir = opts.work_dir / toolkit
    if (save_dir / "checkpoint_last.pt").is_file():
        print(f"{toolkit}: reusing {save_dir}/checkpoint_last.pt", flush=True)
        return float("nan")
    save_dir.mkdir(parents=True, exist_ok=True)
    common = (opts.data, save_dir, opts.updates, 4096, opts.device, "fp32", 50)
    if toolkit == "nmtkit":
        args = nmtkit_train_args(*common, save=True)
        result = run_measured(
            toolkit, NMTKIT_PYTHON, "nmtkit_cli.train:cli_main", "nmtkit-train", args,
            save_dir / "stdout.log",
        )  # fmt: skip
    else:
        args = fairseq_train_args(*common, save=True)
        result = run_measured(
            toolkit, opts.fairseq_python, "fairseq_cli.train:cli_main", "fairseq-train", args,
            save_dir / "stdout.log", env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
        )  # fmt: skip
    print(f"{toolkit}: trained {opts.updates} updates in {result.seconds:.0f}s", flush=True)
    return result.seconds


def score(hypotheses: Path, reference: Path) -> dict[str, float]:
    completed = subprocess.run(
        [
            str(NMTKIT_PYTHON.parent / "nmtkit-score"),
            f"hyp={hypotheses}",
            f"ref={reference}",
            "metrics=[bleu,chrf]",
            "format=json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    scores = json.loads(completed.stdout)
    return {name: scores[name]["score"] for name in ("bleu", "chrf")} | {
        "bleu_signature": scores["bleu"]["signature"]
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/bench/data-bin"))
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench/quality"))
    parser.add_argument("--fairseq-python", type=Path, default=DEFAULT_FAIRSEQ_PYTHON)
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--device", default="cpu")
    opts = parser.parse_args()
    opts.data = opts.data.resolve()
    # Generation settings shared with generate_speed.py.
    opts.beam, opts.batch_size, opts.nmtkit_precision, opts.fairseq_fp16 = 5, 64, "fp32", False
    opts.fixed_length = 0
    return opts


def main() -> None:
    opts = parse_args()
    ensure_data(opts.data, opts.raw)
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    train_seconds = {toolkit: train(toolkit, opts) for toolkit in ("nmtkit", "fairseq")}
    results = {}
    for toolkit in ("nmtkit", "fairseq"):
        checkpoint = opts.work_dir / toolkit / "checkpoint_last.pt"
        output = opts.work_dir / f"{toolkit}.test.hyp.en"
        if toolkit == "nmtkit":
            nmtkit_generate(checkpoint, opts.raw / "test.de", output, opts)
        else:
            fairseq_generate(checkpoint, opts.data, output, opts)
        results[toolkit] = score(output, opts.raw / "test.en")
        results[toolkit]["train_s"] = train_seconds[toolkit]
    print(f"\n{opts.updates} updates each, test set, beam 5, sacreBLEU on detokenized output")
    for toolkit, result in results.items():
        print(
            f"{toolkit:<8} BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  "
            f"train {result['train_s']:.0f}s"
        )
    print(f"signature: {results['nmtkit']['bleu_signature']}")
    (opts.work_dir / "quality.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
