"""SentencePiece training and dictionary building, shared by the text and speech preprocessors."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece

from nmtkit.data.dictionary import Dictionary
from nmtkit.data.text_encoder import load_sentencepiece
from nmtkit.errors import ConfigError, DataError
from nmtkit.preprocess.staging import disk_is_full

logger = logging.getLogger(__name__)


def train_sentencepiece(
    source: Path | Sequence[str],
    model_path: Path,
    *,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    seed: int,
    described: str,
    coverage_setting: str | None = "bpe_character_coverage",
) -> bytes:
    """Trains on every line of a file or on a list of sentences; writes `model_path` (a
    `.model` file) and returns its bytes.

    Sentences given in memory leave no file path in the model, so the same sentences give
    the same bytes wherever they are trained. `described` names the training text in
    messages; `coverage_setting` is the setting a user can lower when the vocabulary is
    smaller than the alphabet (None: no such setting).
    """
    buffer = io.BytesIO()
    where: dict[str, Any]
    if isinstance(source, Path):
        where = {"input": str(source), "model_prefix": str(model_path.with_suffix(""))}
    else:
        where = {"sentence_iterator": iter(source), "model_writer": buffer}
    sentencepiece.set_random_generator_seed(seed)
    try:
        sentencepiece.SentencePieceTrainer.train(
            **where,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=0,  # the caller's sample is the whole training input
            # One thread: multi-threaded training gives a different model for another thread
            # count, and the same inputs must give the same data directory on any machine.
            num_threads=1,
            pad_id=-1,  # padding is the dictionary's business, not a piece
            minloglevel=2,
        )
    except RuntimeError as error:
        # On a full disk SentencePiece says only which of its internal writes failed
        # ("INTERNAL: src/trainer_interface.cc(783) [output->WriteLine(...)]"); ask the disk.
        if disk_is_full(model_path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(model_path)) from None
        raise sentencepiece_error(vocab_size, described, str(error), coverage_setting) from None
    if isinstance(source, Path):
        model_path.with_suffix(".vocab").unlink(missing_ok=True)
        return model_path.read_bytes()
    model_path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def sentencepiece_error(
    vocab_size: int, described: str, message: str, coverage_setting: str | None
) -> Exception:
    """SentencePiece's multi-line RuntimeError as one line that names the setting to change."""
    too_high = re.search(
        r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message
    )
    if too_high:
        return ConfigError(
            f"bpe_vocab_size={vocab_size}: the training text ({described}) supports at "
            f"most {too_high.group(1)} SentencePiece pieces; set bpe_vocab_size<={too_high.group(1)}"
            " or give more training text"
        )
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        lower = f" or lower {coverage_setting}" if coverage_setting else ""
        return ConfigError(
            f"bpe_vocab_size={vocab_size}: smaller than the {too_small.group(1)} "
            f"characters and symbols the training text needs; set bpe_vocab_size>="
            f"{too_small.group(1)}{lower}"
        )
    detail = message.strip().splitlines()[-1] if message.strip() else "unknown error"
    return DataError(f"SentencePiece training on {described} failed: {detail}")


def build_dictionary(
    counts: Counter[str],
    spm_model_proto: bytes | None,
    *,
    threshold: int = 0,
    nwords: int = -1,
    padding_factor: int = 8,
) -> Dictionary:
    """A dictionary of the counted tokens (plus every piece of the model, count 0), finalized."""
    dictionary = Dictionary()
    dictionary.add_counts(counts)
    if spm_model_proto is not None:
        # Pieces the training text never produced can still appear in valid/test text: give
        # every normal piece an entry (count 0, so they sort last) rather than <unk>.
        processor = load_sentencepiece(spm_model_proto)
        for piece_id in range(processor.get_piece_size()):
            if not (
                processor.is_control(piece_id)
                or processor.is_unknown(piece_id)
                or processor.is_unused(piece_id)
            ):
                piece = processor.id_to_piece(piece_id)
                if piece not in dictionary:
                    dictionary.add_symbol(piece, 0)
    dictionary.finalize(threshold=threshold, nwords=nwords, padding_factor=padding_factor)
    return dictionary
