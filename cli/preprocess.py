"""`nmtkit-preprocess`: raw parallel text or speech manifests -> data directory."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from nmtkit.config.launcher import run_cli
from nmtkit.data.text_encoder import PREPROCESS_JSON
from nmtkit.errors import NmtkitError
from nmtkit.preprocess import DEFAULT_TASK, get_preprocessor
from nmtkit.preprocess.termination import (
    SIGTERM_EXIT_STATUS,
    Terminated,
    sigterm_raises_terminated,
)
from nmtkit.preprocess.text import summary

PROGRAM = "nmtkit-preprocess"
__all__ = ["cli_main", "main", "summary"]


def main(cfg: Any) -> None:
    """Builds a data directory for `task` (translation by default; --help lists its settings).

    Parallel text (reads RAW/{train,valid,test}.{de,en}, writes BIN/):

        nmtkit-preprocess source_lang=de target_lang=en \\
            trainpref=RAW/train validpref=RAW/valid testpref=RAW/test destdir=BIN \\
            bpe=sentencepiece bpe_vocab_size=8000 joined_dictionary=true workers=2

    Already tokenized text with existing dictionaries:

        nmtkit-preprocess source_lang=de target_lang=en bpe=none \\
            trainpref=TOK/train validpref=TOK/valid destdir=BIN \\
            srcdict=dict.de.txt tgtdict=dict.en.txt

    Speech (TSV manifests: id audio n_samples speaker src_text tgt_text; target=src_text for
    speech recognition, target=tgt_text for speech translation):

        nmtkit-preprocess task=speech_to_text train=SPEECH/train.tsv \\
            valid=SPEECH/valid.tsv test=SPEECH/test.tsv target=src_text destdir=BIN workers=2
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    preprocessor = get_preprocessor(cfg.task)
    started = time.monotonic()
    try:
        # A scheduler's SIGTERM cleans up as Ctrl-C does instead of leaving the staging folder.
        with sigterm_raises_terminated():
            destdir = preprocessor.run(cfg)
    except Terminated:
        print(
            f"{PROGRAM}: terminated (SIGTERM); destdir={cfg.destdir} not written", file=sys.stderr
        )
        sys.exit(SIGTERM_EXIT_STATUS)
    elapsed = time.monotonic() - started
    manifest = json.loads((destdir / PREPROCESS_JSON).read_text(encoding="utf-8"))
    print(preprocessor.summary(manifest, elapsed))


def requested_task(argv: Sequence[str]) -> str:
    """The `task=NAME` of the command line (the last one wins, as in Hydra), else the default.

    Read before Hydra composes the config, because the task decides which settings exist.
    """
    task = DEFAULT_TASK
    for arg in argv:
        key, equals, value = arg.partition("=")
        if equals and key.lstrip("+~") == "task":
            task = value
    return task


def cli_main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        preprocessor = get_preprocessor(requested_task(arguments))
    except NmtkitError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        sys.exit(1)
    # The text schema keeps its historical name (experiment files may list it in defaults).
    config_name = (
        "nmtkit_preprocess"
        if preprocessor.task == DEFAULT_TASK
        else f"nmtkit_preprocess_{preprocessor.task}"
    )
    # The chosen schema already says which task it is. Hydra must not see `task=` itself: in a
    # process that also ran nmtkit-train (tests, notebooks) it would read it as the `task`
    # config group of the training schema.
    overrides = [a for a in arguments if a.partition("=")[0].lstrip("+~") != "task"]
    run_cli(
        main,
        config_name=config_name,
        config_class=preprocessor.config_class,
        groups={},
        top_level={config_name: preprocessor.config_class},
        argv=overrides,
        program=PROGRAM,
    )


if __name__ == "__main__":
    cli_main()
