"""Token <-> index mapping in fairseq's `dict.<lang>.txt` format.

Indices 0-3 are always `<s>`, `<pad>`, `</s>`, `<unk>`; the file lists the other symbols as
`<symbol> <count>` lines, most frequent first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from nmtkit.errors import DataError

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIAL_SYMBOLS = (BOS, PAD, EOS, UNK)


class Dictionary:
    """Symbols with their counts; `index()` maps unknown symbols to `<unk>`."""

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.counts: list[int] = []
        self.indices: dict[str, int] = {}
        for symbol in SPECIAL_SYMBOLS:
            self.add_symbol(symbol, 1)
        self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
        self.num_special = len(SPECIAL_SYMBOLS)

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dictionary) and self.symbols == other.symbols

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.indices

    def bos(self) -> int:
        return self.bos_index

    def pad(self) -> int:
        return self.pad_index

    def eos(self) -> int:
        return self.eos_index

    def unk(self) -> int:
        return self.unk_index

    def index(self, symbol: str) -> int:
        return self.indices.get(symbol, self.unk_index)

    def add_symbol(self, symbol: str, count: int = 1) -> int:
        if symbol in self.indices:
            index = self.indices[symbol]
            self.counts[index] += count
            return index
        index = len(self.symbols)
        self.indices[symbol] = index
        self.symbols.append(symbol)
        self.counts.append(count)
        return index

    def add_counts(self, counter: Counter[str]) -> None:
        for symbol, count in counter.items():
            self.add_symbol(symbol, count)

    def finalize(self, threshold: int = -1, nwords: int = -1, padding_factor: int = 8) -> None:
        """Sorts symbols by count (ties alphabetically), keeps the top `nwords` with a count of
        at least `threshold`, and pads the size to a multiple of `padding_factor` (as fairseq
        does, with `madeupwordNNNN` symbols) so embedding matrices align on GPU tiles."""
        specials = self.symbols[: self.num_special]
        special_counts = self.counts[: self.num_special]
        rest = sorted(
            zip(self.symbols[self.num_special :], self.counts[self.num_special :]),
            key=lambda item: (-item[1], item[0]),
        )
        if threshold > 0:
            rest = [item for item in rest if item[1] >= threshold]
        if nwords > 0:
            rest = rest[: max(0, nwords - self.num_special)]
        self.symbols, self.counts, self.indices = [], [], {}
        for symbol, count in zip(specials, special_counts):
            self.add_symbol(symbol, count)
        for symbol, count in rest:
            self.add_symbol(symbol, count)
        self.pad_to_multiple(padding_factor)

    def pad_to_multiple(self, padding_factor: int) -> None:
        if padding_factor <= 1:
            return
        filler = 0
        while len(self) % padding_factor != 0:
            self.add_symbol(f"madeupword{filler:04d}", 0)
            filler += 1

    def encode_tokens(self, tokens: Iterable[str], append_eos: bool = True) -> list[int]:
        get, unk = self.indices.get, self.unk_index
        ids = [get(token, unk) for token in tokens]
        if append_eos:
            ids.append(self.eos_index)
        return ids

    def encode_line(self, line: str, append_eos: bool = True) -> list[int]:
        return self.encode_tokens(line.split(), append_eos)

    def string(self, ids: Iterable[int], *, keep_special: bool = False) -> str:
        """Space-joined symbols; drops pad/eos/bos unless `keep_special`."""
        skip = () if keep_special else (self.pad_index, self.eos_index, self.bos_index)
        return " ".join(self.symbols[i] for i in (int(i) for i in ids) if i not in skip)

    def lookup_table(self, symbols: list[str]) -> np.ndarray:
        """Array mapping positions in `symbols` (e.g. a SentencePiece vocabulary) to our ids."""
        return np.array([self.index(symbol) for symbol in symbols], dtype=np.int64)

    # ---- files -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as file:
            for symbol, count in zip(
                self.symbols[self.num_special :], self.counts[self.num_special :]
            ):
                file.write(f"{symbol} {count}\n")

    @classmethod
    def load(cls, path: str | Path) -> Dictionary:
        dictionary = cls()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: dictionary file not found")
        with open(path, encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                line = line.rstrip("\n")
                overwrite = line.endswith(" #fairseq:overwrite")
                if overwrite:
                    line = line[: -len(" #fairseq:overwrite")]
                symbol, _, count = line.rpartition(" ")
                if not symbol or not count.lstrip("-").isdigit():
                    raise DataError(
                        f"{path}:{line_number}: expected '<symbol> <count>', got {line!r}"
                    )
                if symbol in dictionary.indices and not overwrite:
                    raise DataError(f"{path}:{line_number}: duplicate symbol {symbol!r}")
                dictionary.add_symbol(symbol, int(count))
        return dictionary

    # ---- checkpoints (plain lists, loadable with torch.load(weights_only=True)) ---------
    def state_dict(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols), "counts": list(self.counts)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Dictionary:
        dictionary = cls()
        expected = list(SPECIAL_SYMBOLS)
        if list(state["symbols"][: len(expected)]) != expected:
            raise DataError("dictionary state does not start with the special symbols")
        dictionary.symbols, dictionary.counts, dictionary.indices = [], [], {}
        for symbol, count in zip(state["symbols"], state["counts"]):
            dictionary.add_symbol(symbol, int(count))
        return dictionary
