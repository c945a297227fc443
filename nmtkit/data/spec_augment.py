"""SpecAugment (Park et al., 2019): frequency and time masks on training features, with
torchaudio's masking transforms, seeded per utterance.

fairseq draws masks from the global numpy RNG, so they change with the number of data-loader
workers and after a resume. Here each utterance's masks come from its own seed
(seed, epoch, utterance index): identical for any `num_workers`, on any rank, and after an
exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio

from nmtkit.errors import ConfigError

POLICIES: dict[str, dict[str, float]] = {
    # Park et al.'s LibriSpeech policies with adaptive-free time masks, as fairseq's recipes.
    "LB": {"freq_mask_param": 27, "num_freq_masks": 1, "time_mask_param": 100, "num_time_masks": 1, "time_mask_max_ratio": 1.0},
    "LD": {"freq_mask_param": 27, "num_freq_masks": 2, "time_mask_param": 100, "num_time_masks": 2, "time_mask_max_ratio": 1.0},
}  # fmt: skip


@dataclass(frozen=True)
class SpecAugmentSettings:
    """Resolved masking settings (a policy with the user's overrides applied)."""

    freq_mask_param: int
    num_freq_masks: int
    time_mask_param: int
    num_time_masks: int
    time_mask_max_ratio: float

    def validate(self) -> list[str]:
        errors = []
        for name in ("freq_mask_param", "num_freq_masks", "time_mask_param", "num_time_masks"):
            if getattr(self, name) < 0:
                errors.append(f"task.{name}={getattr(self, name)}: must be >= 0")
        if not 0.0 < self.time_mask_max_ratio <= 1.0:
            errors.append(f"task.time_mask_max_ratio={self.time_mask_max_ratio}: must be in (0, 1]")
        return errors


def resolve_spec_augment(
    policy: str, overrides: dict[str, float | int | None]
) -> SpecAugmentSettings | None:
    """The settings of `policy` (none, LB, LD or custom) with the non-None overrides applied.

    Overrides with policy=none would be silently ignored, so they are refused.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if policy == "none":
        if given:
            raise ConfigError(
                f"task.{next(iter(given))}: SpecAugment is off (task.spec_augment=none); "
                "choose task.spec_augment=LB, LD or custom"
            )
        return None
    if policy == "custom":
        missing = [key for key in POLICIES["LB"] if key not in given]
        if missing:
            raise ConfigError(
                f"task.spec_augment=custom needs task.{', task.'.join(missing)} "
                "(or start from a policy: task.spec_augment=LB)"
            )
        values: dict[str, float | int] = {}
    elif policy in POLICIES:
        values = dict(POLICIES[policy])
    else:
        raise ConfigError(f"task.spec_augment={policy}: choose none, LB, LD or custom")
    values.update(given)
    settings = SpecAugmentSettings(
        freq_mask_param=int(values["freq_mask_param"]),
        num_freq_masks=int(values["num_freq_masks"]),
        time_mask_param=int(values["time_mask_param"]),
        num_time_masks=int(values["num_time_masks"]),
        time_mask_max_ratio=float(values["time_mask_max_ratio"]),
    )
    errors = settings.validate()
    if errors:
        raise ConfigError("; ".join(errors))
    return settings


def utterance_seed(seed: int, epoch: int, index: int) -> int:
    """A seed of its own for each (run seed, epoch, utterance)."""
    return int(np.random.SeedSequence([seed, epoch, index, 0x5BEC]).generate_state(1)[0])


class SpecAugment:
    """Masks one utterance's (frames, features) matrix; masked cells take `fill` (per feature:
    the CMVN mean, so they are zero after normalisation)."""

    def __init__(self, settings: SpecAugmentSettings, fill: torch.Tensor) -> None:
        self.settings = settings
        self.fill = fill.float()
        self.frequency_masking = torchaudio.transforms.FrequencyMasking(settings.freq_mask_param)

    def __call__(self, features: torch.Tensor, seed: int) -> torch.Tensor:
        settings = self.settings
        frames = features.size(0)
        # Bounded by this utterance's own length (before any padding).
        time_mask_param = min(settings.time_mask_param, int(settings.time_mask_max_ratio * frames))
        centred = (features.float() - self.fill).t().unsqueeze(0)  # (1, features, frames)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if settings.freq_mask_param > 0:
                for _ in range(settings.num_freq_masks):
                    centred = self.frequency_masking(centred)
            if time_mask_param > 0:
                time_masking = torchaudio.transforms.TimeMasking(time_mask_param)
                for _ in range(settings.num_time_masks):
                    centred = time_masking(centred)
        return centred.squeeze(0).t() + self.fill
