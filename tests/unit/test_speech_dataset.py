"""Speech samples: collation, batching by frames, and deterministic SpecAugment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nmtkit.data.dictionary import Dictionary
from nmtkit.data.iterators import EpochBatchIterator
from nmtkit.data.spec_augment import SpecAugment, resolve_spec_augment
from nmtkit.data.speech_dataset import InMemoryArrays, SpeechDataset
from nmtkit.errors import ConfigError

FEATURES = 8


def make_dataset(spec_augment: SpecAugment | None = None, utterances: int = 12) -> SpeechDataset:
    rng = np.random.default_rng(0)
    dictionary = Dictionary()
    for symbol in "abcd":
        dictionary.add_symbol(symbol)
    frames = [int(n) for n in rng.integers(5, 40, size=utterances)]
    features = InMemoryArrays([rng.normal(size=n * FEATURES).astype(np.float16) for n in frames])
    targets = InMemoryArrays(
        [np.array([*rng.integers(4, 8, size=n % 5 + 1), dictionary.eos()]) for n in frames]
    )
    return SpeechDataset(features, FEATURES, dictionary, targets, spec_augment=spec_augment, seed=7)


def augmenter() -> SpecAugment:
    settings = resolve_spec_augment("LB", {"freq_mask_param": 3, "time_mask_param": 6})
    assert settings is not None
    return SpecAugment(settings, fill=torch.full((FEATURES,), 0.5))


def test_collater_pads_features_right_and_teacher_forces() -> None:
    dataset = make_dataset()
    sample = dataset.collater([dataset[0], dataset[1]])
    features, lengths = sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
    assert features.shape == (2, int(lengths.max()), FEATURES)
    for row in range(2):
        frames = int(lengths[row])
        assert torch.equal(features[row, :frames], dataset[row]["source"])
        assert not features[row, frames:].any()
        target = dataset[row]["target"]
        assert torch.equal(sample["target"][row, : len(target)], target)
        previous = sample["net_input"]["prev_output_tokens"][row, : len(target)]
        assert previous[0] == dataset.eos_index and torch.equal(previous[1:], target[:-1])
    assert sample["ntokens"] == sum(len(dataset[i]["target"]) for i in range(2))


def test_max_tokens_counts_frames() -> None:
    dataset = make_dataset()
    iterator = EpochBatchIterator(dataset, max_tokens=60, batch_size=None, shuffle=False)
    for sample in iterator.next_epoch_itr():
        padded = sample["net_input"]["src_tokens"].shape
        assert padded[0] * padded[1] <= 60


def test_spec_augment_masks_within_the_utterance_and_is_seeded() -> None:
    augment = augmenter()
    features = torch.randn(20, FEATURES)
    first, again, other = augment(features, 1), augment(features, 1), augment(features, 2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    masked = first == 0.5
    assert masked.any()
    # Each time mask spans at most time_mask_param frames and stays inside the 20 frames.
    fully_masked_frames = masked.all(dim=1).sum()
    assert fully_masked_frames <= 6


def _epoch_features(num_workers: int, epoch_batches: int | None = None) -> list[torch.Tensor]:
    dataset = make_dataset(augmenter())
    iterator = EpochBatchIterator(
        dataset, max_tokens=80, batch_size=None, seed=3, num_workers=num_workers
    )
    iterator.next_epoch_itr()
    iterator.next_epoch_itr()  # epoch 1 unconsumed: the epoch counter still moves on
    return [s["net_input"]["src_tokens"] for s in iterator.next_epoch_itr()]


def test_spec_augment_is_identical_for_any_number_of_workers() -> None:
    in_process = _epoch_features(num_workers=0)
    with_workers = _epoch_features(num_workers=2)
    assert len(in_process) == len(with_workers)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers))


def test_spec_augment_is_identical_after_exact_resume() -> None:
    dataset = make_dataset(augmenter())
    straight = EpochBatchIterator(dataset, max_tokens=80, batch_size=None, seed=3, epoch=2)
    batches = [s["net_input"]["src_tokens"] for s in straight.next_epoch_itr()]
    interrupted = EpochBatchIterator(dataset, max_tokens=80, batch_size=None, seed=3, epoch=2)
    epoch = interrupted.next_epoch_itr()
    first = [next(epoch)["net_input"]["src_tokens"] for _ in range(2)]
    resumed = EpochBatchIterator(dataset, max_tokens=80, batch_size=None, seed=3)
    resumed.load_state_dict(interrupted.state_dict())
    rest = [s["net_input"]["src_tokens"] for s in resumed.next_epoch_itr()]
    assert all(torch.equal(a, b) for a, b in zip(batches, first + rest, strict=True))


def test_spec_augment_settings_are_never_silently_ignored() -> None:
    with pytest.raises(ConfigError, match="task.time_mask_param"):
        resolve_spec_augment("none", {"time_mask_param": 5})
    with pytest.raises(ConfigError, match="needs"):
        resolve_spec_augment("custom", {"time_mask_param": 5})
    with pytest.raises(ConfigError, match="LB, LD"):
        resolve_spec_augment("XL", {})
