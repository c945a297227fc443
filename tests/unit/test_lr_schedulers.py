from __future__ import annotations

import io
import math

import pytest
import torch

from nmtkit.errors import ConfigError
from nmtkit.optim import LR_SCHEDULERS, SgdConfig, SgdOptimizer
from nmtkit.optim.lr_scheduler import (
    CosineSchedule,
    CosineScheduleConfig,
    FixedSchedule,
    FixedScheduleConfig,
    InverseSqrtSchedule,
    InverseSqrtScheduleConfig,
    PolynomialDecaySchedule,
    PolynomialDecayScheduleConfig,
    ReduceLROnPlateauSchedule,
    ReduceLROnPlateauScheduleConfig,
)

LR = 1e-3


def make_optimizer() -> SgdOptimizer:
    return SgdOptimizer(SgdConfig(lr=LR), [torch.nn.Parameter(torch.zeros(2))])


def test_registry_lists_and_builds_schedules():
    assert {"fixed", "inverse_sqrt", "cosine", "polynomial_decay", "reduce_lr_on_plateau"} <= set(
        LR_SCHEDULERS.names()
    )
    optimizer = make_optimizer()
    schedule = LR_SCHEDULERS.build(
        CosineScheduleConfig(_name="cosine"), optimizer, LR, total_updates=100
    )
    assert isinstance(schedule, CosineSchedule)
    for name, config in LR_SCHEDULERS.options().items():
        assert config.validate() == [], name
        LR_SCHEDULERS.build(config, make_optimizer(), base_lr=LR, total_updates=50)


def test_inverse_sqrt_matches_closed_form():
    optimizer = make_optimizer()
    config = InverseSqrtScheduleConfig(warmup_updates=10, warmup_init_lr=1e-7)
    schedule = InverseSqrtSchedule(config, optimizer, LR)
    assert optimizer.get_lr() == pytest.approx(1e-7)
    for n in (1, 5, 9):
        expected = 1e-7 + n * (LR - 1e-7) / 10
        assert schedule.step_update(n) == pytest.approx(expected)
        assert optimizer.get_lr() == pytest.approx(expected)
    for n in (10, 40, 1000):
        assert schedule.step_update(n) == pytest.approx(LR * math.sqrt(10 / n))


def test_inverse_sqrt_warmup_starts_at_zero_by_default():
    schedule = InverseSqrtSchedule(
        InverseSqrtScheduleConfig(warmup_updates=4), make_optimizer(), LR
    )
    assert schedule.optimizer.get_lr() == 0.0
    assert [schedule.step_update(n) for n in range(1, 5)] == pytest.approx(
        [LR / 4, LR / 2, 3 * LR / 4, LR]
    )


def test_fixed_warmup_then_constant_then_annealed():
    optimizer = make_optimizer()
    schedule = FixedSchedule(
        FixedScheduleConfig(warmup_updates=4, force_anneal=3, lr_shrink=0.5), optimizer, LR
    )
    assert optimizer.get_lr() == pytest.approx(LR / 4)
    assert schedule.step_update(1) == pytest.approx(LR / 2)
    assert schedule.step_update(3) == pytest.approx(LR)
    assert schedule.step_update(100) == pytest.approx(LR)
    assert schedule.step_begin_epoch(2) == pytest.approx(LR)
    assert schedule.step_begin_epoch(3) == pytest.approx(LR * 0.5)
    assert schedule.step_begin_epoch(4) == pytest.approx(LR * 0.25)
    assert schedule.step_update(101) == pytest.approx(LR * 0.25)


def test_cosine_endpoints_and_midpoint():
    optimizer = make_optimizer()
    config = CosineScheduleConfig(warmup_updates=10, min_lr=1e-5)
    schedule = CosineSchedule(config, optimizer, LR, total_updates=110)
    assert optimizer.get_lr() == pytest.approx(1e-5)  # warmup starts at min_lr by default
    assert schedule.step_update(5) == pytest.approx(1e-5 + 0.5 * (LR - 1e-5))
    assert schedule.step_update(10) == pytest.approx(LR)
    assert schedule.step_update(60) == pytest.approx((LR + 1e-5) / 2)
    assert schedule.step_update(110) == pytest.approx(1e-5)
    assert schedule.step_update(500) == pytest.approx(1e-5)


def test_cosine_period_from_config_overrides_total_updates():
    schedule = CosineSchedule(CosineScheduleConfig(period_updates=20), make_optimizer(), LR)
    assert schedule.optimizer.get_lr() == pytest.approx(LR)
    assert schedule.step_update(10) == pytest.approx(LR / 2)
    assert schedule.step_update(20) == pytest.approx(0.0)


def test_cosine_without_any_period_is_a_config_error():
    with pytest.raises(ConfigError, match="period_updates=-1"):
        CosineSchedule(CosineScheduleConfig(), make_optimizer(), LR, total_updates=None)


def test_polynomial_decay_values():
    optimizer = make_optimizer()
    config = PolynomialDecayScheduleConfig(warmup_updates=4, end_learning_rate=1e-4, power=2.0)
    schedule = PolynomialDecaySchedule(config, optimizer, LR, total_updates=14)
    assert optimizer.get_lr() == pytest.approx(LR / 4)
    assert schedule.step_update(2) == pytest.approx(LR / 2)
    assert schedule.step_update(4) == pytest.approx(LR)
    assert schedule.step_update(9) == pytest.approx((LR - 1e-4) * 0.5**2 + 1e-4)
    assert schedule.step_update(14) == pytest.approx(1e-4)
    assert schedule.step_update(20) == pytest.approx(1e-4)


def test_polynomial_decay_needs_an_end():
    with pytest.raises(ConfigError, match="total_num_update=-1"):
        PolynomialDecaySchedule(PolynomialDecayScheduleConfig(), make_optimizer(), LR)
    schedule = PolynomialDecaySchedule(
        PolynomialDecayScheduleConfig(total_num_update=10), make_optimizer(), LR, total_updates=1000
    )
    assert schedule.step_update(5) == pytest.approx(LR / 2)


def test_reduce_lr_on_plateau_shrinks_after_patience():
    optimizer = make_optimizer()
    config = ReduceLROnPlateauScheduleConfig(lr_shrink=0.5, lr_patience=1, min_lr=2e-4)
    schedule = ReduceLROnPlateauSchedule(config, optimizer, LR)
    assert schedule.step(1, 3.0) == pytest.approx(LR)
    assert schedule.step(2, 2.0) == pytest.approx(LR)  # improved
    assert schedule.step(3, 2.5) == pytest.approx(LR)  # first bad epoch: within patience
    assert schedule.step(4, 2.1) == pytest.approx(LR / 2)  # second: shrink
    assert schedule.step_update(1000) == pytest.approx(LR / 2)  # updates do not undo it
    assert schedule.step(5, None) == pytest.approx(LR / 2)
    for epoch in range(6, 12):
        schedule.step(epoch, 5.0)
    assert optimizer.get_lr() == pytest.approx(2e-4)  # floor


def test_reduce_lr_on_plateau_warmup_blocks_shrinking():
    optimizer = make_optimizer()
    config = ReduceLROnPlateauScheduleConfig(warmup_updates=4, lr_patience=0)
    schedule = ReduceLROnPlateauSchedule(config, optimizer, LR)
    assert optimizer.get_lr() == 0.0
    assert schedule.step_update(2) == pytest.approx(LR / 2)
    schedule.step(1, 1.0)
    schedule.step(2, 9.0)  # ignored: still warming up
    assert optimizer.get_lr() == pytest.approx(LR / 2)
    assert schedule.step_update(4) == pytest.approx(LR)
    schedule.step(3, 1.0)
    assert schedule.step(4, 9.0) == pytest.approx(LR * 0.1)


SCHEDULE_CASES = [
    (FixedSchedule, FixedScheduleConfig(warmup_updates=3, force_anneal=2)),
    (InverseSqrtSchedule, InverseSqrtScheduleConfig(warmup_updates=3)),
    (CosineSchedule, CosineScheduleConfig(warmup_updates=3)),
    (PolynomialDecaySchedule, PolynomialDecayScheduleConfig(warmup_updates=3, power=2.0)),
    (ReduceLROnPlateauSchedule, ReduceLROnPlateauScheduleConfig(warmup_updates=3, lr_patience=1)),
]


def drive(schedule, epochs: range, losses: dict[int, float]) -> list[float]:
    """Simulates the trainer: epoch start, 4 updates, validation."""
    lrs = []
    for epoch in epochs:
        lrs.append(schedule.step_begin_epoch(epoch))
        for update in range(4 * (epoch - 1) + 1, 4 * epoch + 1):
            lrs.append(schedule.step_update(update))
        lrs.append(schedule.step(epoch, losses[epoch]))
    return lrs


@pytest.mark.parametrize(
    "schedule_class, config", SCHEDULE_CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_state_dict_round_trip_continues_identically(schedule_class, config):
    losses = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.4, 5: 2.6, 6: 2.7}
    original = schedule_class(config, make_optimizer(), LR, total_updates=24)
    drive(original, range(1, 4), losses)
    # Through torch.save/load(weights_only=True), as checkpoints are written and read.
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed_optimizer = make_optimizer()
    resumed = schedule_class(config, resumed_optimizer, LR, total_updates=24)
    resumed.load_state_dict(state)
    assert resumed_optimizer.get_lr() == pytest.approx(original.optimizer.get_lr())
    assert drive(resumed, range(4, 7), losses) == pytest.approx(
        drive(original, range(4, 7), losses)
    )


def test_schedules_validate_bad_values():
    assert InverseSqrtScheduleConfig(warmup_updates=0).validate()[0].startswith("warmup_updates=0")
    assert (
        len(FixedScheduleConfig(warmup_updates=-1, force_anneal=0, lr_shrink=0.0).validate()) == 3
    )
    assert (
        len(CosineScheduleConfig(warmup_updates=-1, min_lr=-1.0, period_updates=0).validate()) == 3
    )
    assert (
        len(
            PolynomialDecayScheduleConfig(
                warmup_updates=5, end_learning_rate=-1.0, power=0.0, total_num_update=5
            ).validate()
        )
        == 3
    )
    assert (
        len(
            ReduceLROnPlateauScheduleConfig(
                lr_shrink=1.0, lr_patience=-1, lr_threshold=-1.0, warmup_updates=-1, min_lr=-1.0
            ).validate()
        )
        == 5
    )
    with pytest.raises(ConfigError, match="min_lr"):
        CosineSchedule(CosineScheduleConfig(min_lr=1.0), make_optimizer(), LR, total_updates=10)
