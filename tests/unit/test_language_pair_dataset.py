from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import IndexedDatasetBuilder, MMapIndexedDataset
from nmtkit.data.language_pair_dataset import LanguagePairDataset

PAD, EOS = 1, 2


def write_side(prefix: Path, sequences: list[list[int]]) -> MMapIndexedDataset:
    builder = IndexedDatasetBuilder(prefix, np.uint16)
    for sequence in sequences:
        builder.add_item(sequence)
    builder.finalize()
    return MMapIndexedDataset(prefix)


SOURCES = [[4, 5, EOS], [6, EOS], [7, 8, 9, 10, EOS]]
TARGETS = [[11, 12, EOS], [13, 14, 15, EOS], [16, EOS]]


@pytest.fixture
def pair_dataset(tmp_path: Path) -> LanguagePairDataset:
    dictionary = Dictionary()
    return LanguagePairDataset(
        write_side(tmp_path / "train.src", SOURCES),
        dictionary,
        write_side(tmp_path / "train.tgt", TARGETS),
        dictionary,
    )


def test_items_are_long_tensors_with_ids(pair_dataset: LanguagePairDataset) -> None:
    assert len(pair_dataset) == 3
    item = pair_dataset[1]
    assert item["id"] == 1
    assert item["source"].dtype == torch.long and item["source"].tolist() == [6, EOS]
    assert item["target"].tolist() == [13, 14, 15, EOS]
    assert pair_dataset.src_sizes.tolist() == [3, 2, 5]
    assert pair_dataset.tgt_sizes is not None and pair_dataset.tgt_sizes.tolist() == [3, 4, 2]
    assert [pair_dataset.num_tokens(i) for i in range(3)] == [3, 4, 5]
    assert pair_dataset.size(1) == 4
    assert "train.src" in pair_dataset.name


def test_collater_pads_source_left_target_right(pair_dataset: LanguagePairDataset) -> None:
    sample = pair_dataset.collater([pair_dataset[i] for i in (0, 1, 2)])
    assert sample["id"].tolist() == [0, 1, 2]
    assert sample["nsentences"] == 3
    assert sample["ntokens"] == 3 + 4 + 2
    net_input = sample["net_input"]
    assert net_input["src_tokens"].tolist() == [
        [PAD, PAD, 4, 5, EOS],
        [PAD, PAD, PAD, 6, EOS],
        [7, 8, 9, 10, EOS],
    ]
    assert net_input["src_lengths"].tolist() == [3, 2, 5]
    assert sample["target"].tolist() == [
        [11, 12, EOS, PAD],
        [13, 14, 15, EOS],
        [16, EOS, PAD, PAD],
    ]
    assert net_input["prev_output_tokens"].tolist() == [
        [EOS, 11, 12, PAD],
        [EOS, 13, 14, 15],
        [EOS, 16, PAD, PAD],
    ]
    assert all(t.dtype == torch.long for t in (sample["target"], net_input["src_tokens"]))


def test_collater_honours_the_padding_sides(tmp_path: Path) -> None:
    dictionary = Dictionary()
    dataset = LanguagePairDataset(
        write_side(tmp_path / "s", SOURCES),
        dictionary,
        write_side(tmp_path / "t", TARGETS),
        dictionary,
        left_pad_source=False,
        left_pad_target=True,
    )
    sample = dataset.collater([dataset[0], dataset[1]])
    assert sample["net_input"]["src_tokens"].tolist() == [[4, 5, EOS], [6, EOS, PAD]]
    assert sample["target"].tolist() == [[PAD, 11, 12, EOS], [13, 14, 15, EOS]]
    assert sample["net_input"]["prev_output_tokens"].tolist() == [
        [PAD, EOS, 11, 12],
        [EOS, 13, 14, 15],
    ]


def test_collater_without_targets_for_inference(tmp_path: Path) -> None:
    dataset = LanguagePairDataset(write_side(tmp_path / "s", SOURCES), Dictionary())
    assert dataset.tgt_sizes is None
    assert dataset.num_tokens(2) == 5
    sample = dataset.collater([dataset[2], dataset[1]])
    assert sample["target"] is None
    assert "prev_output_tokens" not in sample["net_input"]
    assert sample["ntokens"] == 7
    assert sample["net_input"]["src_tokens"].tolist() == [[7, 8, 9, 10, EOS], [PAD] * 3 + [6, EOS]]
    assert dataset.collater([]) == {}


def naive_pad(rows: list[list[int]], left: bool) -> list[list[int]]:
    width = max(len(row) for row in rows)
    return [[PAD] * (width - len(r)) + r if left else r + [PAD] * (width - len(r)) for r in rows]


def test_collater_matches_a_row_by_row_reference(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    sources = [list(rng.randint(4, 30, rng.randint(0, 9))) + [EOS] for _ in range(20)]
    targets = [list(rng.randint(4, 30, rng.randint(0, 9))) + [EOS] for _ in range(20)]
    dictionary = Dictionary()
    dataset = LanguagePairDataset(
        write_side(tmp_path / "s", sources), dictionary, write_side(tmp_path / "t", targets)
    )
    chosen = [5, 0, 19, 7, 3, 11]
    sample = dataset.collater([dataset[i] for i in chosen])
    assert sample["net_input"]["src_tokens"].tolist() == naive_pad(
        [sources[i] for i in chosen], left=True
    )
    assert sample["target"].tolist() == naive_pad([targets[i] for i in chosen], left=False)
    shifted = [[EOS] + targets[i][:-1] for i in chosen]
    assert sample["net_input"]["prev_output_tokens"].tolist() == naive_pad(shifted, left=False)
    assert sample["ntokens"] == sum(len(targets[i]) for i in chosen)
    # The criterion computes logits only here: exactly the non-pad target positions.
    expected = sample["target"].ne(PAD).view(-1).nonzero().squeeze(1)
    assert sample["target_positions"].tolist() == expected.tolist()


def test_filter_by_size_keeps_order_and_counts(pair_dataset: LanguagePairDataset) -> None:
    kept, dropped = pair_dataset.filter_by_size(np.array([2, 0, 1]), 4, 3)
    assert kept.tolist() == [0] and dropped == 2
    kept, dropped = pair_dataset.filter_by_size(np.array([2, 0, 1]), None, None)
    assert kept.tolist() == [2, 0, 1] and dropped == 0


def test_mismatched_sides_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        LanguagePairDataset(
            write_side(tmp_path / "s", SOURCES), Dictionary(), write_side(tmp_path / "t", [[2]])
        )
