"""Raw text <-> token ids: the one code path shared by preprocessing, generation and BLEU.

With a SentencePiece model, text is cut into pieces by sentencepiece and each piece id is
mapped to a dictionary id through a lookup table (pieces missing from the dictionary become
`<unk>`); decoding joins the pieces back into detokenized text. Without one (`bpe=none`),
text is split on whitespace and decoding joins symbols with spaces.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece

from nmtkit.data.dictionary import Dictionary
from nmtkit.errors import DataError

PREPROCESS_JSON = "preprocess.json"


class TextEncoder:
    """Encodes lines into dictionary ids (ending with `</s>`) and decodes ids into text."""

    def __init__(
        self,
        dictionary: Dictionary,
        spm_model_proto: bytes | None = None,
        *,
        num_threads: int = 1,
    ) -> None:
        self.dictionary = dictionary
        self.spm_model_proto = spm_model_proto
        self.num_threads = num_threads
        self._eos = dictionary.eos()
        self._skipped_on_decode = {dictionary.pad(), dictionary.eos(), dictionary.bos()}
        self._processor: sentencepiece.SentencePieceProcessor | None = None
        self._spm_to_dictionary = np.zeros(0, dtype=np.int64)
        if spm_model_proto is not None:
            self._processor = load_sentencepiece(spm_model_proto)
            pieces = [
                self._processor.id_to_piece(i) for i in range(self._processor.get_piece_size())
            ]
            self._spm_to_dictionary = dictionary.lookup_table(pieces)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, lang: str, *, num_threads: int = 1) -> TextEncoder:
        """The encoder of `lang` in a data directory; fairseq data-bin folders (no
        preprocess.json) give a whitespace encoder over `dict.<lang>.txt`."""
        data_dir = Path(data_dir)
        dictionary_file, model_file = f"dict.{lang}.txt", None
        manifest = data_dir / PREPROCESS_JSON
        if manifest.is_file():
            info = json.loads(manifest.read_text(encoding="utf-8"))
            dictionary_file = info.get("dictionaries", {}).get(lang, dictionary_file)
            model_file = info.get("bpe", {}).get("models", {}).get(lang)
        dictionary = Dictionary.load(data_dir / dictionary_file)
        proto = None
        if model_file is not None:
            model_path = data_dir / model_file
            if not model_path.is_file():
                raise DataError(f"{model_path}: SentencePiece model named in {manifest} is missing")
            proto = model_path.read_bytes()
        return cls(dictionary, proto, num_threads=num_threads)

    @property
    def uses_sentencepiece(self) -> bool:
        return self._processor is not None

    def encode(self, line: str) -> list[int]:
        """Token ids of one line, `</s>` appended."""
        flat, _ = self.encode_batch_flat([line])
        return flat.tolist()

    def encode_batch(self, lines: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each line (int64 arrays, `</s>` appended)."""
        flat, sizes = self.encode_batch_flat(lines)
        return np.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) else []

    def encode_batch_flat(self, lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All lines' ids back to back (int64) and each line's length (int32), `</s>` included:
        the shape IndexedDatasetBuilder.add_items takes."""
        if self._processor is not None:
            # One numpy gather turns all piece ids into dictionary ids.
            flat_pieces, lengths = encode_piece_ids(self._processor, lines, self.num_threads)
            tokens = self._spm_to_dictionary[flat_pieces]
        else:
            split_lines = [line.split() for line in lines]
            lengths = np.fromiter(map(len, split_lines), dtype=np.int64, count=len(split_lines))
            total = int(lengths.sum())
            # dict.get(token, unk) through map() stays in C: the fast path for large corpora.
            tokens = np.fromiter(
                map(
                    self.dictionary.indices.get,
                    itertools.chain.from_iterable(split_lines),
                    itertools.repeat(self.dictionary.unk()),
                ),
                dtype=np.int64,
                count=total,
            )
        return _append_eos(tokens, lengths, self._eos)

    def encode_pieces(self, line: str) -> list[str]:
        """The subword pieces (or whitespace tokens) of a line, without `</s>`."""
        if self._processor is not None:
            return self._processor.encode(line.strip(), out_type=str)
        return line.split()

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text; `<pad>`, `</s>` and `<s>` are dropped."""
        symbols = self.dictionary.symbols
        pieces = [symbols[i] for i in map(int, ids) if i not in self._skipped_on_decode]
        if self._processor is not None:
            return self._processor.decode_pieces(pieces)
        return " ".join(pieces)


def encode_piece_ids(
    processor: sentencepiece.SentencePieceProcessor, lines: Sequence[str], num_threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """SentencePiece ids of all lines back to back (int64) and each line's count of pieces.

    sentencepiece encodes the whole batch in C++ (with `num_threads` threads); lines are
    stripped first, so surrounding whitespace and line ends never matter.
    """
    piece_ids = processor.encode(
        [line.strip() for line in lines], out_type=int, num_threads=num_threads
    )
    lengths = np.fromiter(map(len, piece_ids), dtype=np.int64, count=len(piece_ids))
    flat = np.fromiter(
        itertools.chain.from_iterable(piece_ids), dtype=np.int64, count=int(lengths.sum())
    )
    return flat, lengths


def load_sentencepiece(model_proto: bytes) -> sentencepiece.SentencePieceProcessor:
    """A SentencePiece processor from a model's bytes; DataError when they are not a model."""
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    except (RuntimeError, OSError) as error:
        raise DataError(f"not a valid SentencePiece model: {str(error).strip()}") from None


def _append_eos(tokens: np.ndarray, lengths: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
    sizes = (lengths + 1).astype(np.int32)
    flat = np.full(int(sizes.sum(dtype=np.int64)), eos, dtype=np.int64)
    keep = np.ones(len(flat), dtype=bool)
    keep[np.cumsum(sizes, dtype=np.int64) - 1] = False
    flat[keep] = tokens
    return flat, sizes
