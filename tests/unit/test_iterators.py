from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import IndexedDatasetBuilder, MMapIndexedDataset
from nmtkit.data.iterators import EpochBatchIterator
from nmtkit.data.language_pair_dataset import LanguagePairDataset
from nmtkit.errors import ConfigError, DataError

NUM_PAIRS = 80


def write_side(prefix: Path, lengths: np.ndarray, rng: np.random.RandomState) -> None:
    builder = IndexedDatasetBuilder(prefix, np.uint16)
    for length in lengths:
        builder.add_item(list(rng.randint(4, 40, int(length) - 1)) + [2])
    builder.finalize()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> LanguagePairDataset:
    folder = tmp_path_factory.mktemp("pairs")
    rng = np.random.RandomState(0)
    write_side(folder / "train.src", rng.randint(1, 13, NUM_PAIRS), rng)
    write_side(folder / "train.tgt", rng.randint(1, 13, NUM_PAIRS), rng)
    dictionary = Dictionary()
    return LanguagePairDataset(
        MMapIndexedDataset(folder / "train.src"),
        dictionary,
        MMapIndexedDataset(folder / "train.tgt"),
        dictionary,
    )


def make(dataset: LanguagePairDataset, **overrides: Any) -> EpochBatchIterator:
    options: dict[str, Any] = dict(
        max_tokens=40, batch_size=None, required_batch_size_multiple=1, seed=7
    )
    options.update(overrides)
    return EpochBatchIterator(dataset, **options)


def ids_of(samples: list[dict[str, Any]]) -> list[list[int]]:
    return [sample["id"].tolist() for sample in samples]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_an_epoch_yields_every_pair_once_within_max_tokens(dataset: LanguagePairDataset) -> None:
    iterator = make(dataset)
    epoch = iterator.next_epoch_itr()
    assert len(epoch) == len(iterator)
    samples = list(epoch)
    assert len(samples) == len(epoch) and iterator.end_of_epoch()
    assert iterator.iterations_in_epoch == len(samples)
    assert sorted(flat(ids_of(samples))) == list(range(NUM_PAIRS))
    for sample in samples:
        assert sample["net_input"]["src_tokens"].numel() <= 40
        assert sample["target"].numel() <= 40
        assert "is_dummy" not in sample


def test_epochs_differ_and_repeat_per_seed(dataset: LanguagePairDataset) -> None:
    iterator = make(dataset)
    first = ids_of(list(iterator.next_epoch_itr()))
    second = ids_of(list(iterator.next_epoch_itr()))
    assert iterator.epoch == 2 and first != second
    again = make(dataset)
    assert ids_of(list(again.next_epoch_itr())) == first
    assert ids_of(list(make(dataset, seed=8).next_epoch_itr())) != first


def test_too_long_pairs_are_an_error_unless_skipped(dataset: LanguagePairDataset) -> None:
    too_long = int(np.sum((dataset.src_sizes > 10) | (dataset.tgt_sizes > 9)))
    assert too_long > 0
    with pytest.raises(DataError, match=f"{too_long} of {NUM_PAIRS} pairs are longer") as error:
        make(dataset, max_positions=(10, 9))
    assert "longest: pair" in str(error.value) and "12 " in str(error.value)
    assert "set dataset.skip_invalid_size_inputs=true or raise max_source_positions" in str(
        error.value
    )
    iterator = make(dataset, max_positions=(10, 9), skip_invalid_size_inputs=True)
    assert iterator.num_filtered == too_long
    seen = flat(ids_of(list(iterator.next_epoch_itr())))
    assert len(seen) == NUM_PAIRS - too_long
    assert all(dataset.src_sizes[i] <= 10 and dataset.tgt_sizes[i] <= 9 for i in seen)


def test_max_tokens_below_the_longest_pair_is_a_config_error(
    dataset: LanguagePairDataset,
) -> None:
    with pytest.raises(ConfigError, match="dataset.max_tokens=8: .* cannot fit"):
        make(dataset, max_tokens=8)
    with pytest.raises(ConfigError, match="set at least one"):
        make(dataset, max_tokens=None)


def test_resume_with_the_same_settings_yields_exactly_the_rest(
    dataset: LanguagePairDataset,
) -> None:
    expected = list(make(dataset).next_epoch_itr())
    interrupted = make(dataset)
    epoch = interrupted.next_epoch_itr()
    for _ in range(5):
        next(epoch)
    state = roundtrip(interrupted.state_dict())
    assert state["epoch"] == 1 and state["iterations_in_epoch"] == 5
    resumed = make(dataset)
    resumed.load_state_dict(state)
    rest = list(resumed.next_epoch_itr())
    assert resumed.iterations_in_epoch == len(expected) and resumed.end_of_epoch()
    assert ids_of(rest) == ids_of(expected[5:])
    for got, want in zip(rest, expected[5:]):
        assert torch.equal(got["net_input"]["src_tokens"], want["net_input"]["src_tokens"])
        assert torch.equal(
            got["net_input"]["prev_output_tokens"], want["net_input"]["prev_output_tokens"]
        )


def test_resume_with_changed_batching_yields_the_unseen_samples_once(
    dataset: LanguagePairDataset,
) -> None:
    first_run = make(dataset)
    epoch = first_run.next_epoch_itr()
    seen = flat(ids_of([next(epoch) for _ in range(4)]))
    second_run = make(dataset, max_tokens=60, batch_size=5)
    second_run.load_state_dict(roundtrip(first_run.state_dict()))
    epoch = second_run.next_epoch_itr()
    second = [next(epoch) for _ in range(3)]
    assert all(len(sample["id"]) <= 5 for sample in second)
    seen += flat(ids_of(second))
    assert second_run.iterations_in_epoch == 7
    # A third run with yet other settings continues from the chained state.
    third_run = make(dataset, max_tokens=24, required_batch_size_multiple=2)
    third_run.load_state_dict(roundtrip(second_run.state_dict()))
    seen += flat(ids_of(list(third_run.next_epoch_itr())))
    assert sorted(seen) == list(range(NUM_PAIRS))
    assert third_run.end_of_epoch()
    state = third_run.state_dict()
    assert state["epoch"] == 2 and state["iterations_in_epoch"] == 0
    assert state["earlier_segments"] == []


def test_shards_are_disjoint_and_equally_long(dataset: LanguagePairDataset) -> None:
    single = make(dataset, max_tokens=24)
    total_batches = len(single)
    shards = [make(dataset, max_tokens=24, num_shards=3, shard_id=s) for s in range(3)]
    samples = [list(shard.next_epoch_itr()) for shard in shards]
    assert len({len(per_shard) for per_shard in samples}) == 1
    real = [[s for s in per_shard if not s.get("is_dummy")] for per_shard in samples]
    assert sum(len(per_shard) for per_shard in real) == total_batches
    all_ids = [flat(ids_of(per_shard)) for per_shard in real]
    assert sorted(sum(all_ids, [])) == list(range(NUM_PAIRS))
    dummies = [s for per_shard in samples for s in per_shard if s.get("is_dummy")]
    assert len(dummies) == (-total_batches) % 3


def test_resume_on_a_different_number_of_shards(dataset: LanguagePairDataset) -> None:
    shards = [make(dataset, num_shards=2, shard_id=s) for s in range(2)]
    seen: list[int] = []
    for shard in shards:
        epoch = shard.next_epoch_itr()
        seen += flat(ids_of([next(epoch) for _ in range(3)]))
    single = make(dataset)
    single.load_state_dict(roundtrip(shards[0].state_dict()))
    seen += flat(ids_of(list(single.next_epoch_itr())))
    assert sorted(seen) == list(range(NUM_PAIRS))


def test_end_of_epoch_state_starts_the_next_epoch(dataset: LanguagePairDataset) -> None:
    straight = make(dataset)
    list(straight.next_epoch_itr())
    state = roundtrip(straight.state_dict())
    assert state["epoch"] == 2 and state["iterations_in_epoch"] == 0
    assert straight.next_epoch_idx == 2
    expected = ids_of(list(straight.next_epoch_itr()))
    resumed = make(dataset)
    resumed.load_state_dict(state)
    epoch = resumed.next_epoch_itr()
    assert resumed.epoch == 2 and len(epoch) == len(expected)
    assert ids_of(list(epoch)) == expected


def test_worker_processes_give_the_same_batches(dataset: LanguagePairDataset) -> None:
    in_process = ids_of(list(make(dataset, max_tokens=200).next_epoch_itr()))
    iterator = make(dataset, max_tokens=200, num_workers=1)
    epoch = iterator.next_epoch_itr()
    assert ids_of(list(epoch)) == in_process
    assert iterator.iterations_in_epoch == len(in_process)


def test_a_superseded_epoch_iterator_refuses_to_continue(dataset: LanguagePairDataset) -> None:
    iterator = make(dataset)
    old = iterator.next_epoch_itr()
    next(old)
    new = iterator.next_epoch_itr()  # mid-epoch: continues the same epoch
    assert iterator.epoch == 1 and len(new) == len(iterator) - 1
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)
    next(new)
    assert iterator.iterations_in_epoch == 2


def test_exact_resume_after_a_resume_with_changed_batching(dataset: LanguagePairDataset) -> None:
    first_run = make(dataset)
    epoch = first_run.next_epoch_itr()
    next(epoch), next(epoch)
    changed_state = roundtrip(first_run.state_dict())

    straight = make(dataset, batch_size=4)
    straight.load_state_dict(changed_state)
    expected = ids_of(list(straight.next_epoch_itr()))

    interrupted = make(dataset, batch_size=4)
    interrupted.load_state_dict(changed_state)
    epoch = interrupted.next_epoch_itr()
    head = ids_of([next(epoch) for _ in range(3)])
    resumed = make(dataset, batch_size=4)
    resumed.load_state_dict(roundtrip(interrupted.state_dict()))
    assert resumed.iterations_in_epoch == 5
    assert head + ids_of(list(resumed.next_epoch_itr())) == expected


def test_resume_checks_the_dataset_only_mid_epoch(
    dataset: LanguagePairDataset, tmp_path: Path
) -> None:
    rng = np.random.RandomState(1)
    write_side(tmp_path / "other.src", rng.randint(1, 13, 10), rng)
    write_side(tmp_path / "other.tgt", rng.randint(1, 13, 10), rng)
    other = LanguagePairDataset(
        MMapIndexedDataset(tmp_path / "other.src"),
        dataset.src_dict,
        MMapIndexedDataset(tmp_path / "other.tgt"),
    )
    iterator = make(dataset)
    epoch = iterator.next_epoch_itr()
    next(epoch)
    with pytest.raises(DataError, match=f"saved for {NUM_PAIRS} pairs but the dataset has 10"):
        make(other).load_state_dict(iterator.state_dict())
    list(epoch)
    next_dataset = make(other)
    next_dataset.load_state_dict(iterator.state_dict())
    assert next_dataset.epoch == 2
    assert sorted(flat(ids_of(list(next_dataset.next_epoch_itr())))) == list(range(10))
