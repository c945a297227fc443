from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nmtkit.data.dictionary import Dictionary
from nmtkit.errors import DataError


def make_dictionary(counts: dict[str, int]) -> Dictionary:
    dictionary = Dictionary()
    dictionary.add_counts(Counter(counts))
    return dictionary


def test_special_symbols_come_first() -> None:
    dictionary = Dictionary()
    assert dictionary.symbols == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (dictionary.bos(), dictionary.pad(), dictionary.eos(), dictionary.unk()) == (0, 1, 2, 3)
    assert len(dictionary) == 4


def test_add_symbol_accumulates_counts() -> None:
    dictionary = Dictionary()
    first = dictionary.add_symbol("haus", 2)
    assert dictionary.add_symbol("haus", 3) == first == 4
    assert dictionary.counts[first] == 5
    assert "haus" in dictionary and "maus" not in dictionary
    assert dictionary.index("maus") == dictionary.unk()


def test_finalize_sorts_by_count_then_alphabetically() -> None:
    dictionary = make_dictionary({"b": 2, "a": 2, "c": 5, "d": 1})
    dictionary.finalize(padding_factor=1)
    assert dictionary.symbols[4:] == ["c", "a", "b", "d"]
    assert dictionary.index("a") == 5


def test_finalize_threshold_and_nwords() -> None:
    dictionary = make_dictionary({"a": 5, "b": 3, "c": 1})
    dictionary.finalize(threshold=2, padding_factor=1)
    assert dictionary.symbols[4:] == ["a", "b"]
    dictionary = make_dictionary({"a": 5, "b": 3, "c": 1})
    dictionary.finalize(nwords=5, padding_factor=1)  # nwords counts the 4 special symbols
    assert dictionary.symbols[4:] == ["a"]


def test_finalize_pads_to_multiple_with_madeupwords() -> None:
    dictionary = make_dictionary({"a": 5, "b": 3, "c": 1})
    dictionary.finalize(padding_factor=8)
    assert len(dictionary) == 8
    assert dictionary.symbols[7] == "madeupword0000"
    assert dictionary.counts[7] == 0
    exact = make_dictionary({symbol: 1 for symbol in "abcd"})
    exact.finalize(padding_factor=8)
    assert len(exact) == 8 and "madeupword0000" not in exact


def test_save_load_round_trip_in_fairseq_format(tmp_path: Path) -> None:
    dictionary = make_dictionary({"haus": 4, "größe": 2, "▁piece": 1})
    dictionary.finalize(padding_factor=8)
    path = tmp_path / "dict.de.txt"
    dictionary.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["haus 4", "größe 2", "▁piece 1"]
    assert len(lines) == len(dictionary) - 4  # specials are implicit, as in fairseq
    loaded = Dictionary.load(path)
    assert loaded == dictionary
    assert loaded.counts == dictionary.counts


def test_load_accepts_fairseq_overwrite_flag(tmp_path: Path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text("a 3\nb 2\na 1 #fairseq:overwrite\n", encoding="utf-8")
    assert Dictionary.load(path).symbols[4:] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("a 3\nno_count\n", r"dict.txt:2: expected '<symbol> <count>'"), ("a 3\na 4\n", "duplicate")],
)
def test_load_rejects_bad_lines(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "dict.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        Dictionary.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        Dictionary.load(tmp_path / "nope.txt")


def test_encode_and_string() -> None:
    dictionary = make_dictionary({"a": 2, "b": 1})
    dictionary.finalize(padding_factor=1)
    ids = dictionary.encode_line("a x b")
    assert ids == [4, 3, 5, 2]
    assert dictionary.string(ids) == "a <unk> b"
    assert dictionary.string([1, *ids], keep_special=True) == "<pad> a <unk> b </s>"


def test_lookup_table_maps_foreign_vocabulary() -> None:
    dictionary = make_dictionary({"▁a": 1, "b": 1})
    table = dictionary.lookup_table(["<unk>", "<s>", "</s>", "▁a", "zz"])
    assert table.tolist() == [3, 0, 2, dictionary.index("▁a"), 3]


def test_state_dict_round_trip() -> None:
    dictionary = make_dictionary({"a": 2, "b": 1})
    restored = Dictionary.from_state_dict(dictionary.state_dict())
    assert restored == dictionary and restored.counts == dictionary.counts
    with pytest.raises(DataError):
        Dictionary.from_state_dict({"symbols": ["a"], "counts": [1]})
