"""THE training loop of nmtkit. It reads in the order it runs:

    set up (device, seeds, task, model, criterion, optimizer, scheduler, data, resume)
    for each epoch, for each update:
        get batches -> forward -> loss -> backward (accumulate update_freq batches)
        -> unscale / normalise / clip -> step -> schedule -> zero_grad -> log
        -> validate / save when due -> stop when due

Losses are summed over tokens on every rank; gradients are divided by the total number of
target tokens of the update (all batches, all ranks), so results do not depend on how an
update is split across accumulation steps or GPUs.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmtkit import distributed, validation
from nmtkit.checkpoint import load_checkpoint, numbered_checkpoints, save_checkpoint
from nmtkit.config.launcher import config_to_dict
from nmtkit.config.train import TrainConfig
from nmtkit.errors import CheckpointError, ConfigError, NmtkitError
from nmtkit.optim import LR_SCHEDULERS, OPTIMIZERS
from nmtkit.run_log import RunLogger, write_run_files
from nmtkit.tasks import TASKS


class TrainingError(NmtkitError):
    """Training cannot go on (diverged, loss scale collapsed); the message says why."""


@dataclass
class Progress:
    """Counters that a resumed run continues from (saved in every checkpoint)."""

    epoch: int = 1
    num_updates: int = 0
    best_metric: float | None = None
    validations_without_improvement: int = 0
    train_seconds: float = 0.0
    skipped_updates: int = 0


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> Progress:
    """Trains until a stopping criterion is met; returns the final counters."""
    context = distributed.setup(cfg.distributed, cfg.common.device)
    device = context.device
    seed_everything(cfg.common.seed)
    save_dir = Path(cfg.checkpoint.save_dir)
    if not cfg.task.data:
        raise ConfigError("task.data: set the data directory, e.g. task.data=data-bin")

    task = TASKS.build(cfg.task)
    model = task.build_model(cfg.model).to(device)
    criterion = task.build_criterion(cfg.criterion).to(device)
    criterion.check_model(model)  # e.g. a CTC weight without a CTC head: fail before any work
    optimizer = OPTIMIZERS.build(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    lr_scheduler = LR_SCHEDULERS.build(
        cfg.lr_scheduler,
        optimizer,
        base_lr=cfg.optimizer.lr,
        total_updates=cfg.optimization.max_update or None,
    )
    precision = cfg.common.precision
    scaler = torch.amp.GradScaler(
        device.type,
        init_scale=cfg.common.fp16_init_scale,
        growth_interval=cfg.common.fp16_scale_window,
        enabled=precision == "fp16",
    )

    progress = Progress()
    resume_state = find_resume_state(cfg, save_dir)
    if resume_state is not None:
        progress = restore_training_state(cfg, resume_state, model, optimizer, lr_scheduler, scaler)
    train_iterator = task.batch_iterator(
        cfg.dataset.train_subset,
        cfg.dataset,
        model_cfg=cfg.model,
        epoch=progress.epoch,
        seed=cfg.common.seed,
        num_shards=context.world_size,
        shard_id=context.rank,
        training=True,
    )
    if resume_state is not None and "training_state" in resume_state:
        training_state = resume_state["training_state"]
        if not cfg.checkpoint.reset_dataloader:
            train_iterator.load_state_dict(training_state["iterator"])
        # After the data iterator exists: building it must not shift the random streams.
        restore_rng_state(training_state["rng"], device)

    if context.is_main_process:
        write_run_files(save_dir, cfg, task.data_fingerprint())
    logger = RunLogger(
        save_dir, cfg.common.log_format, cfg.common.tensorboard_logdir, context.is_main_process
    )
    if context.is_main_process:
        logger.info(describe_run(cfg, model, device, context, progress, resume_state is not None))
    ddp_model = distributed.wrap_model(model, context, cfg.distributed)
    params = [p for p in model.parameters() if p.requires_grad]
    run_started = time.monotonic() - progress.train_seconds
    interval = IntervalStats()
    lr = optimizer.get_lr()
    # Re-running a finished run's command resumes into "nothing left to do", not one more update.
    stop_reason = mid_epoch_stop_reason(cfg, progress, lr)
    max_epoch = cfg.optimization.max_epoch
    if max_epoch and train_iterator.next_epoch_idx > max_epoch:
        stop_reason = f"reached max_epoch={max_epoch}"
    if stop_reason:
        logger.info(f"nothing to train: {stop_reason} already (run directory {save_dir})")

    while not stop_reason:
        epoch_batches = train_iterator.next_epoch_itr()
        progress.epoch = train_iterator.epoch
        lr_scheduler.step_begin_epoch(progress.epoch)
        done_before = train_iterator.iterations_in_epoch
        logger.start_epoch(progress.epoch, done_before + len(epoch_batches), done_before)
        batches = iter(epoch_batches)
        while True:
            # 1. Get the batches of one update (update_freq of them, fewer at the epoch end).
            update_batches = [b for _, b in zip(range(cfg.optimization.update_freq), batches)]
            if not update_batches:
                break

            # 2-4. Forward, loss, backward; DDP syncs gradients on the last batch only.
            update_stats = UpdateStats()
            for i, sample in enumerate(update_batches):
                sample = distributed.move_to_device(sample, device)
                is_last = i == len(update_batches) - 1
                with distributed.maybe_no_sync(ddp_model, skip_sync=not is_last):
                    with distributed.autocast(device, precision):
                        loss, sample_size, logging_output = task.train_step(
                            ddp_model, criterion, sample
                        )
                    if sample.get("is_dummy"):
                        # A shard one batch short repeats a batch so DDP ranks stay in step;
                        # it must add nothing to gradients or statistics.
                        loss, sample_size, logging_output = loss * 0.0, 0, {}
                    scaler.scale(loss).backward()
                update_stats.add(sample_size, logging_output)

            # 5. Sum the token counts over ranks, then turn summed gradients into per-token ones.
            update_stats.all_reduce(context)
            scaler.unscale_(optimizer.optimizer)
            # DDP averaged over ranks; multiply back to a sum, then divide by all tokens.
            scale_gradients(params, context.world_size / max(update_stats.sample_size, 1))
            max_norm = cfg.optimization.clip_norm if cfg.optimization.clip_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()

            # 6. Step, unless gradients are not finite (fp16 overflow or divergence).
            if math.isfinite(grad_norm):
                scaler.step(optimizer.optimizer)
                scaler.update()
                progress.num_updates += 1
                lr = lr_scheduler.step_update(progress.num_updates)
                interval.add(update_stats, grad_norm)
            else:
                handle_nonfinite_update(cfg, scaler, progress, logger)
            optimizer.zero_grad()
            logger.advance(len(update_batches))

            # 7. Log every log_interval updates.
            if progress.num_updates % cfg.common.log_interval == 0 and interval.updates:
                stats = interval.summary(
                    criterion, progress, lr, scaler if precision == "fp16" else None
                )
                logger.record("train", stats, progress.num_updates)
                logger.advance(0, stats)
                interval = IntervalStats()

            # 8. Validate and save when due; decide whether to stop.
            progress.train_seconds = time.monotonic() - run_started
            stop_reason = mid_epoch_stop_reason(cfg, progress, optimizer.get_lr())
            update_interval = cfg.dataset.validate_interval_updates
            save_interval = cfg.checkpoint.save_interval_updates
            due_validation = update_interval > 0 and progress.num_updates % update_interval == 0
            due_save = save_interval > 0 and progress.num_updates % save_interval == 0
            if due_validation or due_save or stop_reason:
                stop_reason = validate_and_save(
                    cfg, task, model, criterion, optimizer, lr_scheduler, scaler,
                    train_iterator, progress, context, logger,
                    end_of_epoch=False, validate=due_validation or bool(stop_reason),
                ) or stop_reason  # fmt: skip
            if stop_reason:
                break

        # 9. End of epoch: validate, adapt the learning rate, save, check the epoch limit.
        logger.end_epoch()
        if not stop_reason:
            if cfg.optimization.max_epoch and progress.epoch >= cfg.optimization.max_epoch:
                stop_reason = f"reached max_epoch={cfg.optimization.max_epoch}"
            validate_now = (
                cfg.dataset.validate_interval > 0
                and progress.epoch % cfg.dataset.validate_interval == 0
            ) or bool(stop_reason)
            stop_reason = validate_and_save(
                cfg, task, model, criterion, optimizer, lr_scheduler, scaler,
                train_iterator, progress, context, logger,
                end_of_epoch=True, validate=validate_now,
            ) or stop_reason  # fmt: skip

    logger.info(
        f"done: {stop_reason} | updates {progress.num_updates} | epoch {progress.epoch} | "
        f"best {cfg.checkpoint.best_checkpoint_metric} {progress.best_metric} | "
        f"{progress.train_seconds:.0f}s"
    )
    logger.close()
    distributed.cleanup()
    return progress


# --------------------------------------------------------------------------------------------
# Helpers, in the order the loop uses them
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def find_resume_state(cfg: TrainConfig, save_dir: Path) -> dict[str, Any] | None:
    """checkpoint_last.pt in save_dir (or restore_file) if present, else finetune_from_model."""
    restore = Path(cfg.checkpoint.restore_file)
    restore = restore if restore.is_absolute() else save_dir / restore
    if restore.is_file():
        return load_checkpoint(restore)
    if cfg.checkpoint.restore_file != "checkpoint_last.pt":
        raise CheckpointError(f"checkpoint.restore_file={restore}: checkpoint not found")
    if cfg.checkpoint.finetune_from_model:
        state = load_checkpoint(cfg.checkpoint.finetune_from_model)
        return {key: value for key, value in state.items() if key != "training_state"}
    return None


def restore_training_state(
    cfg: TrainConfig,
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: Any,
    lr_scheduler: Any,
    scaler: torch.amp.GradScaler,
) -> Progress:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint does not fit the configured model ({str(error).splitlines()[0]}); "
            "use the same model settings as the run that wrote it"
        ) from None
    if "training_state" not in state:  # finetune_from_model: weights only
        return Progress()
    training_state = state["training_state"]
    if not cfg.checkpoint.reset_optimizer:
        optimizer.load_state_dict(training_state["optimizer"])
        scaler.load_state_dict(training_state["scaler"])
    if not cfg.checkpoint.reset_lr_scheduler:
        lr_scheduler.load_state_dict(training_state["lr_scheduler"])
    saved_progress = dict(training_state["progress"])
    # format_version 1 checkpoints also carry a loss history that nothing reads (the losses
    # are in train_log.jsonl).
    saved_progress.pop("history", None)
    progress = Progress(**saved_progress)
    if cfg.checkpoint.reset_dataloader:
        progress.epoch += 1
    if cfg.checkpoint.reset_meters:
        progress.train_seconds = 0.0
    return progress


def restore_rng_state(rng: dict[str, Any], device: torch.device) -> None:
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np.random.set_state(
        (rng["numpy"][0], np.array(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:])
    )
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Plain containers and tensors only, so `torch.load(weights_only=True)` can read them."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *[float(x) for x in numpy_state[2:]]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def describe_run(
    cfg: TrainConfig,
    model: torch.nn.Module,
    device: torch.device,
    context: distributed.DistributedContext,
    progress: Progress,
    resumed: bool,
) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    start = (
        f"resuming at epoch {progress.epoch}, update {progress.num_updates}"
        if resumed
        else "starting"
    )
    return (
        f"model {cfg.model._name} with {parameters:,} parameters | device {device} x "
        f"{context.world_size} | precision {cfg.common.precision} | {start} | "
        f"run directory {cfg.checkpoint.save_dir}"
    )


class UpdateStats:
    """Logging outputs of one update. Python numbers are summed on the host and tensors on
    their device, so nothing waits for the GPU until a log line is due."""

    def __init__(self) -> None:
        self.sample_size = 0.0
        self.numbers: dict[str, float] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, sample_size: float, logging_output: dict[str, Any]) -> None:
        self.sample_size += sample_size
        for key, value in logging_output.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().double()
                self.tensors[key] = value + self.tensors[key] if key in self.tensors else value
            elif isinstance(value, (int, float)):
                self.numbers[key] = self.numbers.get(key, 0.0) + value

    def merge(self, other: UpdateStats) -> None:
        self.sample_size += other.sample_size
        self.add(0, {**other.numbers, **other.tensors})

    def all_reduce(self, context: distributed.DistributedContext) -> None:
        """One collective for every statistic of the update (no-op on a single process)."""
        if not context.is_distributed:
            return
        number_keys, tensor_keys = sorted(self.numbers), sorted(self.tensors)
        host = torch.tensor(
            [self.sample_size, *(self.numbers[k] for k in number_keys)],
            dtype=torch.float64,
            device=context.device,
        )
        packed = torch.cat([host, *(self.tensors[k].reshape(1) for k in tensor_keys)])
        distributed.all_reduce_sum(packed, context)
        summed_host = packed[: len(host)].tolist()
        self.sample_size = summed_host[0]
        self.numbers = dict(zip(number_keys, summed_host[1:]))
        self.tensors = {k: packed[len(host) + i] for i, k in enumerate(tensor_keys)}

    def totals(self) -> dict[str, float]:
        values = torch.stack(list(self.tensors.values())).tolist() if self.tensors else []
        return {**self.numbers, **dict(zip(self.tensors, values))}


def scale_gradients(params: list[torch.nn.Parameter], factor: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if grads and factor != 1.0:
        torch._foreach_mul_(grads, factor)


class IntervalStats:
    """Sums over the updates of one log interval, turned into displayed figures on demand."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.updates = 0
        self.sums = UpdateStats()
        self.grad_norm_sum = 0.0

    def add(self, update_stats: UpdateStats, grad_norm: float) -> None:
        self.sums.merge(update_stats)
        self.updates += 1
        self.grad_norm_sum += grad_norm

    def summary(
        self, criterion: Any, progress: Progress, lr: float, scaler: torch.amp.GradScaler | None
    ) -> dict[str, Any]:
        seconds = max(time.monotonic() - self.started, 1e-9)
        totals = self.sums.totals()
        metrics = criterion.reduce_metrics([totals])
        ntokens = totals.get("ntokens", self.sums.sample_size)
        stats: dict[str, Any] = {"update": progress.num_updates, "epoch": progress.epoch}
        stats.update(
            {
                k: float(v)
                for k, v in metrics.items()
                if k not in ("ntokens", "nsentences", "sample_size")
            }
        )
        stats.update(
            wps=ntokens / seconds,
            ups=self.updates / seconds,
            wpb=ntokens / self.updates,
            bsz=totals.get("nsentences", 0.0) / self.updates,
            lr=lr,
            gnorm=self.grad_norm_sum / self.updates,
            wall=progress.train_seconds,
        )
        if scaler is not None:
            stats["loss_scale"] = scaler.get_scale()
        return stats


def handle_nonfinite_update(
    cfg: TrainConfig, scaler: torch.amp.GradScaler, progress: Progress, logger: RunLogger
) -> None:
    """fp16: an overflow lowers the loss scale (and is normal now and then); otherwise the
    loss diverged: halt with advice, or skip the batch when on_nonfinite_loss=skip."""
    at = f"update {progress.num_updates + 1} (epoch {progress.epoch})"
    if scaler.is_enabled():
        scaler.update()
        scale = scaler.get_scale()
        if scale < cfg.common.min_loss_scale:
            raise TrainingError(
                f"fp16 loss scale fell to {scale:g} (< common.min_loss_scale="
                f"{cfg.common.min_loss_scale:g}) at {at}: gradients overflow even at tiny "
                "scales, so the model is diverging; lower optimizer.lr, set "
                "optimization.clip_norm, or use common.precision=bf16"
            )
        logger.info(f"gradient overflow at {at}; loss scale lowered to {scale:g}")
        return
    progress.skipped_updates += 1
    if cfg.common.on_nonfinite_loss == "halt":
        raise TrainingError(
            f"loss or gradient is NaN/inf at {at}: training diverged; lower optimizer.lr, "
            "set optimization.clip_norm, increase warmup, or set "
            "common.on_nonfinite_loss=skip to drop such batches"
        )
    logger.info(f"skipped {at}: NaN/inf gradient ({progress.skipped_updates} skipped so far)")


def mid_epoch_stop_reason(cfg: TrainConfig, progress: Progress, lr: float) -> str:
    optimization = cfg.optimization
    if optimization.max_update and progress.num_updates >= optimization.max_update:
        return f"reached max_update={optimization.max_update}"
    if (
        optimization.stop_time_hours
        and progress.train_seconds >= optimization.stop_time_hours * 3600
    ):
        return f"reached stop_time_hours={optimization.stop_time_hours}"
    if optimization.stop_min_lr >= 0 and lr <= optimization.stop_min_lr:
        return f"learning rate {lr:g} reached stop_min_lr={optimization.stop_min_lr}"
    return ""


def validate_and_save(
    cfg: TrainConfig,
    task: Any,
    model: torch.nn.Module,
    criterion: Any,
    optimizer: Any,
    lr_scheduler: Any,
    scaler: torch.amp.GradScaler,
    train_iterator: Any,
    progress: Progress,
    context: distributed.DistributedContext,
    logger: RunLogger,
    *,
    end_of_epoch: bool,
    validate: bool,
) -> str:
    """Validates (when asked), tracks the best metric, saves checkpoints; returns a stop
    reason when patience ran out, else ''."""
    metric_value = None
    if validate and not cfg.dataset.disable_validation:
        stats = validation.validate(cfg, task, model, criterion, context, logger)
        metric_name = cfg.checkpoint.best_checkpoint_metric
        if metric_name not in stats:
            raise ConfigError(
                f"checkpoint.best_checkpoint_metric={metric_name}: validation reports only "
                f"{', '.join(sorted(stats))} (bleu needs generation.eval_bleu=true, wer "
                "generation.eval_wer=true)"
            )
        metric_value = float(stats[metric_name])
        improved = is_better(metric_value, progress.best_metric, cfg)
        if improved:
            progress.best_metric = metric_value
            progress.validations_without_improvement = 0
        else:
            progress.validations_without_improvement += 1
        stats.update(
            update=progress.num_updates,
            epoch=progress.epoch,
            **{f"best_{metric_name}": progress.best_metric},
        )
        logger.record("valid", stats, progress.num_updates)
        if end_of_epoch:
            lr_scheduler.step(progress.epoch, stats.get("loss"))
    elif end_of_epoch:
        lr_scheduler.step(progress.epoch, None)
    if context.is_main_process and not cfg.checkpoint.no_save:
        save_training_checkpoints(
            cfg, task, model, optimizer, lr_scheduler, scaler, train_iterator, progress,
            context.device, end_of_epoch=end_of_epoch,
            is_best=metric_value is not None and progress.best_metric == metric_value
            and progress.validations_without_improvement == 0,
        )  # fmt: skip
    patience = cfg.checkpoint.patience
    if patience > 0 and progress.validations_without_improvement >= patience:
        return (
            f"no improvement of {cfg.checkpoint.best_checkpoint_metric} in {patience} validations"
        )
    return ""


def is_better(value: float, best: float | None, cfg: TrainConfig) -> bool:
    if best is None:
        return True
    return value > best if cfg.checkpoint.maximize_best_checkpoint_metric else value < best


def save_training_checkpoints(
    cfg: TrainConfig,
    task: Any,
    model: torch.nn.Module,
    optimizer: Any,
    lr_scheduler: Any,
    scaler: torch.amp.GradScaler,
    train_iterator: Any,
    progress: Progress,
    device: torch.device,
    *,
    end_of_epoch: bool,
    is_best: bool,
) -> None:
    """checkpoint_last.pt always; checkpoint_<epoch>_<update>.pt at save intervals;
    checkpoint_best.pt when the validation metric improved. One serialisation for all."""
    save_dir = Path(cfg.checkpoint.save_dir)
    state = {
        "config": config_to_dict(cfg),
        "model": distributed.unwrap_model(model).state_dict(),
        "task": task.state_dict(),
        "data_fingerprint": task.data_fingerprint(),
        "training_state": {
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(device),
            "iterator": train_iterator.state_dict(),
            "progress": progress.__dict__.copy(),
        },
    }
    paths = [save_dir / "checkpoint_last.pt"]
    numbered = not cfg.checkpoint.no_epoch_checkpoints and (
        (end_of_epoch and progress.epoch % cfg.checkpoint.save_interval == 0)
        or (not end_of_epoch and cfg.checkpoint.save_interval_updates > 0)
    )
    if numbered:
        paths.append(save_dir / f"checkpoint_{progress.epoch}_{progress.num_updates}.pt")
    if is_best:
        paths.append(save_dir / "checkpoint_best.pt")
    save_checkpoint(state, *paths)
    if cfg.checkpoint.keep_last_n > 0:
        for old in numbered_checkpoints(save_dir)[: -cfg.checkpoint.keep_last_n]:
            old.unlink()
