"""`nmtkit-preprocess`: raw parallel text -> binarized data directory."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

from nmtkit.config.launcher import run_cli
from nmtkit.data.text_encoder import PREPROCESS_JSON
from nmtkit.preprocess import PreprocessConfig, preprocess


def main(cfg: PreprocessConfig) -> None:
    """Trains SentencePiece, builds dictionaries and binarizes parallel text.

    Example (reads RAW/{train,valid,test}.{de,en}, writes BIN/):

        nmtkit-preprocess source_lang=de target_lang=en \\
            trainpref=RAW/train validpref=RAW/valid testpref=RAW/test destdir=BIN \\
            bpe=sentencepiece bpe_vocab_size=8000 joined_dictionary=true workers=2

    Already tokenized text with existing dictionaries:

        nmtkit-preprocess source_lang=de target_lang=en bpe=none \\
            trainpref=TOK/train validpref=TOK/valid destdir=BIN \\
            srcdict=dict.de.txt tgtdict=dict.en.txt
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.monotonic()
    destdir = preprocess(cfg)
    elapsed = time.monotonic() - started
    print(summary(json.loads((destdir / PREPROCESS_JSON).read_text(encoding="utf-8")), elapsed))


def summary(manifest: dict, elapsed_seconds: float) -> str:
    """A few lines on what preprocess.json records: pairs per split, vocabularies, unk rates."""
    languages = (manifest["source_lang"], manifest["target_lang"])
    sizes = manifest["vocab_sizes"]
    joined = " (joined)" if manifest["joined_dictionary"] else ""
    lines = [
        f"wrote {manifest['config']['destdir']} in {elapsed_seconds:.1f} s",
        "  dictionaries: " + ", ".join(f"{lang} {sizes[lang]}" for lang in languages) + joined,
    ]
    for split, entry in manifest["splits"].items():
        dropped = sum(entry["dropped"].values())
        unk = " / ".join(f"{lang} {100 * entry[lang]['unk_rate']:.2f}%" for lang in languages)
        lines.append(f"  {split}: {entry['pairs']} pairs ({dropped} dropped), unk {unk}")
    return "\n".join(lines)


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main,
        config_name="nmtkit_preprocess",
        config_class=PreprocessConfig,
        groups={},
        top_level={"nmtkit_preprocess": PreprocessConfig},
        argv=argv,
        program="nmtkit-preprocess",
    )


if __name__ == "__main__":
    cli_main()
