"""THE training loop of nmtkit. It reads in the order it runs:

    set up (`setup`: device, seeds, run directory, task, model -> wrap/shard -> optimizer ->
            resume state, data)
    for each epoch, for each update:
        get batches -> forward -> loss -> backward (accumulate update_freq batches)
        -> unscale / normalise / clip -> step -> schedule -> zero_grad -> log
        -> validate / save when due -> stop when due (limits, patience, SIGTERM/SIGUSR1)

Losses are summed over tokens on every rank; gradients are divided by the total number of
target tokens of the update (all batches, all ranks), so results do not depend on how an
update is split across accumulation steps or GPUs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmtkit import distributed, validation
from nmtkit.checkpoint import (
    load_checkpoint,
    load_encoder_weights,
    numbered_checkpoints,
    save_checkpoint,
)
from nmtkit.config.launcher import config_to_dict
from nmtkit.config.train import TrainConfig
from nmtkit.errors import CheckpointError, ConfigError, NmtkitError
from nmtkit.optim import LR_SCHEDULERS, OPTIMIZERS
from nmtkit.output_files import atomic_text_output, ensure_writable_dir, remove_stale_temporaries
from nmtkit.preemption import StopSignals
from nmtkit.run_lock import RunLock
from nmtkit.run_log import (
    RunLogger,
    experiment_id,
    finished_duplicates,
    flatten_config,
    write_run_files,
    write_run_status,
)
from nmtkit.tasks import TASKS


class TrainingError(NmtkitError):
    """Training cannot go on (diverged, loss scale collapsed, a rank failed); says why."""


class Preempted(Exception):
    """Training stopped on a scheduler's signal after saving checkpoint_last.pt; the CLI exits
    with nmtkit.preemption.PREEMPTED_EXIT_CODE so a job script can requeue."""


@dataclass
class Progress:
    """Counters that a resumed run continues from (saved in every checkpoint)."""

    epoch: int = 1
    num_updates: int = 0
    best_metric: float | None = None
    validations_without_improvement: int = 0
    train_seconds: float = 0.0
    skipped_updates: int = 0
    oom_skipped_updates: int = 0


@dataclass
class TrainingRun:
    """The objects of one run, built by `setup` in the order sharding needs (model -> wrap or
    shard -> optimizer -> saved state)."""

    cfg: TrainConfig
    context: distributed.DistributedContext
    task: Any
    model: torch.nn.Module  # the module whose weights are saved (sharded in place under FSDP)
    train_model: torch.nn.Module  # what the training forward runs on (DDP wrapper or model)
    criterion: Any
    optimizer: Any
    lr_scheduler: Any
    scaler: torch.amp.GradScaler
    train_iterator: Any
    progress: Progress
    logger: RunLogger
    params: list[torch.nn.Parameter]
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def save_dir(self) -> Path:
        return Path(self.cfg.checkpoint.save_dir)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> Progress:
    """Trains until a stopping criterion is met; returns the final counters."""
    with StopSignals() as signals, setup(cfg) as run:
        try:
            stop_reason = train_loop(run, signals)
        except BaseException as error:
            failure = (
                as_rank_failure(error, run.context) if isinstance(error, RuntimeError) else error
            )
            record_end(run, "stopped", describe_failure(failure))
            if failure is error:
                raise
            raise failure from None
        progress = run.progress
        record_end(run, "stopped" if signals.received else "finished", stop_reason)
        run.logger.info(
            f"done: {stop_reason} | updates {progress.num_updates} | epoch {progress.epoch} | "
            f"best {cfg.checkpoint.best_checkpoint_metric} {progress.best_metric} | "
            f"{progress.train_seconds:.0f}s"
        )
        if cfg.common.plot and run.context.is_main_process:
            from nmtkit.runs import plot_runs  # matplotlib is an optional extra

            plot_path = run.save_dir / "training.png"
            plot_runs([run.save_dir], plot_path)
            run.logger.info(f"plotted the run: {plot_path}")
    distributed.cleanup()
    if signals.received:
        raise Preempted(
            f"stopped by {signals.received} at update {progress.num_updates} after saving "
            f"{run.save_dir / 'checkpoint_last.pt'}; run the same command again to resume"
        )
    return progress


def record_end(run: TrainingRun, status: str, reason: str) -> None:
    if run.context.is_main_process:
        progress = run.progress
        write_run_status(run.save_dir, status, reason, progress.num_updates, progress.epoch)


def describe_failure(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(error, SystemExit):
        return f"stopped at once (exit code {error.code})"
    first_line = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def train_loop(run: TrainingRun, signals: StopSignals) -> str:
    cfg, context, progress, logger = run.cfg, run.context, run.progress, run.logger
    device, precision, scaler, optimizer = (
        context.device,
        cfg.common.precision,
        run.scaler,
        run.optimizer,
    )
    # Skipping an out-of-memory batch must be agreed by all ranks before gradients are
    # exchanged, so that mode syncs gradients by hand after the update's batches.
    sync_by_hand = cfg.optimization.skip_oom_batches and context.is_distributed
    run_started = time.monotonic() - progress.train_seconds
    interval = IntervalStats()
    lr = optimizer.get_lr()
    # Re-running a finished run's command resumes into "nothing left to do", not one more update.
    stop_reason = mid_epoch_stop_reason(cfg, progress, lr)
    max_epoch = cfg.optimization.max_epoch
    if max_epoch and run.train_iterator.next_epoch_idx > max_epoch:
        stop_reason = f"reached max_epoch={max_epoch}"
    if stop_reason:
        logger.info(f"nothing to train: {stop_reason} already (run directory {run.save_dir})")

    while not stop_reason:
        epoch_batches = run.train_iterator.next_epoch_itr()
        progress.epoch = run.train_iterator.epoch
        run.lr_scheduler.step_begin_epoch(progress.epoch)
        done_before = run.train_iterator.iterations_in_epoch
        logger.start_epoch(progress.epoch, done_before + len(epoch_batches), done_before)
        batches = iter(epoch_batches)
        while True:
            # 1. Get the batches of one update (update_freq of them, fewer at the epoch end).
            update_batches = [b for _, b in zip(range(cfg.optimization.update_freq), batches)]
            if not update_batches:
                break

            # 2-4. Forward, loss, backward; gradients are synced on the last batch only.
            update_stats = UpdateStats()
            out_of_memory = False
            for i, sample in enumerate(update_batches):
                sample = distributed.move_to_device(sample, device)
                skip_sync = sync_by_hand or i < len(update_batches) - 1
                try:
                    with distributed.maybe_no_sync(run.train_model, skip_sync=skip_sync):
                        with distributed.autocast(device, precision):
                            loss, sample_size, logging_output = run.task.train_step(
                                run.train_model, run.criterion, sample
                            )
                        if sample.get("is_dummy"):
                            # A shard one batch short repeats a batch so ranks stay in step;
                            # it adds nothing to gradients or statistics (zeros, not no keys:
                            # every rank must send the same statistics to the all-reduce).
                            loss, sample_size = loss * 0.0, 0
                            logging_output = {k: v * 0 for k, v in logging_output.items()}
                        scaler.scale(loss).backward()
                except torch.OutOfMemoryError:
                    out_of_memory = handle_out_of_memory(cfg, progress, sample)
                    break
                update_stats.add(sample_size, logging_output)

            # 5. Sum the token counts over ranks (with whether any rank ran out of memory or
            #    was asked to stop), then turn summed gradients into per-token ones.
            flags = {"out_of_memory": out_of_memory, "stop_signal": signals.received is not None}
            if sync_by_hand:
                # A rank that ran out of memory holds no statistics: agree on skipping first.
                flags = distributed.any_rank(flags, context)
                if not flags["out_of_memory"]:
                    update_stats.all_reduce(context)
            else:
                flags = update_stats.all_reduce(context, **flags)
            if flags["out_of_memory"]:
                optimizer.zero_grad()
                progress.oom_skipped_updates += 1
                logger.info(
                    f"skipped update {progress.num_updates + 1}: out of memory on a rank "
                    f"({progress.oom_skipped_updates} skipped so far)"
                )
                distributed.release_cached_memory(device)
            else:
                if sync_by_hand:
                    distributed.average_gradients(run.params, context)
                scaler.unscale_(optimizer.optimizer)
                # Gradients are averaged over ranks; multiply back to a sum, divide by tokens.
                scale_gradients(run.params, context.world_size / max(update_stats.sample_size, 1))
                max_norm = (
                    cfg.optimization.clip_norm if cfg.optimization.clip_norm > 0 else math.inf
                )
                grad_norm = distributed.total_norm_to_float(
                    torch.nn.utils.clip_grad_norm_(run.params, max_norm)
                )

                # 6. Step, unless gradients are not finite (fp16 overflow or divergence).
                if math.isfinite(grad_norm):
                    scaler.step(optimizer.optimizer)
                    scaler.update()
                    progress.num_updates += 1
                    lr = run.lr_scheduler.step_update(progress.num_updates)
                    interval.add(update_stats, grad_norm)
                else:
                    handle_nonfinite_update(cfg, scaler, progress, logger)
                optimizer.zero_grad()
            logger.advance(len(update_batches))

            # 7. Log every log_interval updates.
            if progress.num_updates % cfg.common.log_interval == 0 and interval.updates:
                stats = interval.summary(
                    run.criterion, progress, lr, scaler if precision == "fp16" else None
                )
                logger.record("train", stats, progress.num_updates)
                logger.advance(0, stats)
                interval = IntervalStats()

            # 8. Validate and save when due; decide whether to stop.
            progress.train_seconds = time.monotonic() - run_started
            stop_reason = mid_epoch_stop_reason(cfg, progress, optimizer.get_lr())
            if flags["stop_signal"]:
                stop_reason = f"received {signals.received or 'a stop signal on another rank'}"
            update_interval = cfg.dataset.validate_interval_updates
            save_interval = cfg.checkpoint.save_interval_updates
            due_validation = update_interval > 0 and progress.num_updates % update_interval == 0
            due_save = save_interval > 0 and progress.num_updates % save_interval == 0
            if due_validation or due_save or stop_reason:
                # A preempted job saves at once: the scheduler's grace period is short.
                validate = (due_validation or bool(stop_reason)) and not flags["stop_signal"]
                stop_reason = (
                    validate_and_save(run, end_of_epoch=False, validate=validate) or stop_reason
                )
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
            stop_reason = (
                validate_and_save(run, end_of_epoch=True, validate=validate_now) or stop_reason
            )
    return stop_reason


# --------------------------------------------------------------------------------------------
# Set-up, in the order it runs
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def setup(cfg: TrainConfig) -> Any:
    """Builds the run; everything that can refuse (paths, lock, resume compatibility, data
    splits) is checked before any file of the run directory is written. Yields a
    TrainingRun; on exit closes the log and releases the run lock."""
    context = distributed.setup(cfg.distributed, cfg.common.device)
    device = context.device
    seed_everything(cfg.common.seed)
    save_dir = Path(cfg.checkpoint.save_dir)
    if not cfg.task.data:
        raise ConfigError("task.data: set the data directory, e.g. task.data=data-bin")
    if cfg.common.tensorboard_logdir and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            f"common.tensorboard_logdir={cfg.common.tensorboard_logdir}: TensorBoard is not "
            "installed; pip install nmtkit[tensorboard] (or unset it: train_log.jsonl has the "
            "same numbers)"
        )
    if cfg.common.plot:
        from nmtkit.runs import require_matplotlib

        require_matplotlib("common.plot")  # before the work, not after it
    if cfg.distributed.strategy == "fsdp" and cfg.common.precision == "fp16":
        raise ConfigError(
            "distributed.strategy=fsdp with common.precision=fp16: use bf16 (fp16 needs a "
            "sharded loss scaler that nmtkit does not provide)"
        )
    if cfg.distributed.strategy == "fsdp" and cfg.optimization.skip_oom_batches:
        raise ConfigError(
            "optimization.skip_oom_batches=true works with distributed.strategy=ddp only"
        )
    with contextlib.ExitStack() as cleanup:
        if context.is_main_process:
            ensure_writable_dir(save_dir, "checkpoint.save_dir")
            lock = RunLock(save_dir)
            lock.acquire()
            cleanup.callback(lock.release)
            # Temporary files of writes a kill interrupted (checkpoints, the truncated log).
            stale = remove_stale_temporaries(save_dir, ".checkpoint_*.pt.*")
            stale += remove_stale_temporaries(save_dir, ".train_log.jsonl.*.tmp")
        resume_state = find_resume_state(cfg, save_dir)

        task = TASKS.build(cfg.task)
        resume_warnings = []
        if resume_state is not None and "training_state" in resume_state:
            resume_warnings = check_resume_compatible(cfg, resume_state, task)
        model = task.build_model(cfg.model).to(device)
        criterion = task.build_criterion(cfg.criterion).to(device)
        criterion.check_model(model)  # e.g. a CTC weight without a CTC head: fail before work
        encoder_source = cfg.checkpoint.init_encoder_from
        loaded_encoder = []
        if encoder_source and resume_state is None:
            loaded_encoder = load_encoder_weights(model, encoder_source)
        train_model = distributed.wrap_model(model, context, cfg.distributed, cfg.common.precision)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS.build(cfg.optimizer, params)
        lr_scheduler = LR_SCHEDULERS.build(
            cfg.lr_scheduler,
            optimizer,
            base_lr=cfg.optimizer.lr,
            total_updates=cfg.optimization.max_update or None,
        )
        scaler = torch.amp.GradScaler(
            device.type,
            init_scale=cfg.common.fp16_init_scale,
            growth_interval=cfg.common.fp16_scale_window,
            enabled=cfg.common.precision == "fp16",
        )
        progress = Progress()
        if resume_state is not None:
            progress = restore_training_state(
                cfg, resume_state, model, optimizer, lr_scheduler, scaler
            )
        if not cfg.dataset.disable_validation:
            # A missing valid split fails now, not at the first validation hours from now.
            for subset in (s.strip() for s in cfg.dataset.valid_subset.split(",")):
                task.load_dataset(subset, epoch=1, training=False, seed=cfg.common.seed)
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

        identity = experiment_id(config_to_dict(cfg), task.data_fingerprint())
        duplicates = []
        if context.is_main_process and not (resume_state and "training_state" in resume_state):
            duplicates = finished_duplicates(save_dir, identity)
            if duplicates and cfg.checkpoint.refuse_duplicate:
                raise ConfigError(
                    f"checkpoint.refuse_duplicate=true: {duplicates[0]} already ran this "
                    f"experiment (id {identity}: same settings, data and nmtkit version)"
                )

        # Everything that can refuse has been checked: now the run directory is written.
        if context.is_main_process:
            write_run_files(save_dir, cfg, task.data_fingerprint(), identity)
            if resume_state is not None and "training_state" in resume_state:
                truncate_train_log(save_dir, progress.num_updates)
        logger = RunLogger(
            save_dir, cfg.common.log_format, cfg.common.tensorboard_logdir, context.is_main_process
        )
        cleanup.callback(logger.close)
        if context.is_main_process:
            if lock.took_over:
                logger.info(lock.took_over)
            if stale:
                logger.info(f"removed {len(stale)} unfinished file write(s) of a killed run")
            if loaded_encoder:
                layers = {
                    n.split(".")[2] for n in loaded_encoder if n.startswith("encoder.layers.")
                }
                logger.info(
                    f"initialised the encoder from {encoder_source}: {len(loaded_encoder)} "
                    f"tensors ({len(layers)} layers, "
                    f"{sum(model.state_dict()[n].numel() for n in loaded_encoder):,} values"
                    f"{', CMVN' if any(n.startswith('cmvn_') for n in loaded_encoder) else ''})"
                )
            elif encoder_source:
                logger.info(f"checkpoint.init_encoder_from ignored: resuming from {save_dir}")
            if resume_state is not None:
                describe_changed_settings(cfg, resume_state, logger)
            for warning in resume_warnings:
                logger.info(warning)
            if duplicates:
                logger.info(
                    f"warning: {duplicates[0]} already finished this experiment (id {identity}: "
                    "same settings, data and nmtkit version); set "
                    "checkpoint.refuse_duplicate=true to refuse such repeats"
                )
            logger.info(
                describe_run(cfg, model, device, context, progress, resume_state is not None)
            )
        yield TrainingRun(
            cfg=cfg, context=context, task=task, model=model, train_model=train_model,
            criterion=criterion, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler,
            train_iterator=train_iterator, progress=progress, logger=logger, params=params,
        )  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def find_resume_state(cfg: TrainConfig, save_dir: Path) -> dict[str, Any] | None:
    """checkpoint_last.pt in save_dir (or restore_file) if present, else finetune_from_model."""
    restore = Path(cfg.checkpoint.restore_file)
    restore = restore if restore.is_absolute() else save_dir / restore
    if restore.is_file():
        state = load_checkpoint(restore)
        if "training_state" not in state:
            # Restarting at update 0 over it would silently throw the run's counters away.
            raise CheckpointError(
                f"{restore}: has no training state (an exported or averaged model?), so "
                "training cannot resume from it; move it away, or train from its weights in "
                f"a new save_dir with checkpoint.finetune_from_model={restore}"
            )
        state["path"] = str(restore)
        return state
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
    where = state.get("path", cfg.checkpoint.finetune_from_model)
    try:
        distributed.load_full_model_state_dict(model, state["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{where}: does not fit the configured model ({describe_load_error(error)}); "
            "use the same model settings as the run that wrote it"
        ) from None
    if "training_state" not in state:  # finetune_from_model: weights only
        return Progress()
    training_state = state["training_state"]
    if not cfg.checkpoint.reset_optimizer:
        try:
            distributed.load_full_optimizer_state_dict(
                model, optimizer.optimizer, training_state["optimizer"]
            )
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(
                f"{where}: its optimizer state does not fit optimizer={cfg.optimizer._name} "
                f"({describe_load_error(error)}); set checkpoint.reset_optimizer=true to start "
                "the optimizer afresh"
            ) from None
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


def describe_load_error(error: BaseException) -> str:
    """The first line of torch's message, which names the tensor (missing, unexpected, or
    'size mismatch for decoder.embed_tokens.weight: ... [64, 32] ... [80, 32]')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    detail = next((line for line in lines if line.startswith("size mismatch")), "")
    return f"{lines[0]} {detail}".strip() if detail and detail != lines[0] else lines[0]


# Groups whose component holds state in the checkpoint: a different one cannot resume it.
RESUME_GROUPS = (
    ("task", None),
    ("model", None),
    ("optimizer", "reset_optimizer"),
    ("lr_scheduler", "reset_lr_scheduler"),
)


def check_resume_compatible(cfg: TrainConfig, state: dict[str, Any], task: Any) -> list[str]:
    """Refuses, naming the key, a resume whose settings cannot continue the saved run; runs
    before any file is written (config.yaml included). Returns warnings to log."""
    where = state.get("path", "checkpoint")
    saved = state.get("config") or {}
    for group, reset in RESUME_GROUPS:
        before = (saved.get(group) or {}).get("_name")
        now = getattr(cfg, group)._name
        if before != now and not (reset and getattr(cfg.checkpoint, reset)):
            remedy = f"set checkpoint.{reset}=true to start it afresh, or " if reset else ""
            raise CheckpointError(
                f"{where}: was trained with {group}={before} but the config says {group}={now}; "
                f"{remedy}use another checkpoint.save_dir"
            )
    before_data = {k: v for k, v in (state.get("data_fingerprint") or {}).items() if k != "data"}
    now_data = {k: v for k, v in task.data_fingerprint().items() if k != "data"}
    changed = sorted(k for k in before_data.keys() | now_data.keys()
                     if before_data.get(k) != now_data.get(k))  # fmt: skip
    if not before_data or not changed or cfg.checkpoint.reset_dataloader:
        return []
    differences = ", ".join(f"{k} {before_data.get(k)} -> {now_data.get(k)}" for k in changed)
    if changed != ["fingerprint"]:
        raise CheckpointError(
            f"{where}: the training data changed since it was written ({differences}); the "
            "saved data position means nothing on other data: set "
            "checkpoint.reset_dataloader=true to continue from the start of an epoch"
        )
    # The same files preprocessed again (by a newer nmtkit, say) also get a new fingerprint,
    # so a changed fingerprint alone is reported, not refused.
    return [
        f"warning: the training data's fingerprint changed since {where} was written "
        f"({differences}); continuing at the saved data position; set "
        "checkpoint.reset_dataloader=true if the data really changed"
    ]


def describe_changed_settings(cfg: TrainConfig, state: dict[str, Any], logger: RunLogger) -> None:
    """A resume may change settings (lr, patience, ...): say which, so none changes silently."""
    before = flatten_config(state.get("config") or {})
    now = flatten_config(config_to_dict(cfg))
    changed = [
        f"{key} {before.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(before.keys() | now.keys())
        if before.get(key) != now.get(key) and key != "defaults"
    ]
    if changed:
        logger.info("resuming with changed settings: " + "; ".join(changed))


def truncate_train_log(save_dir: Path, num_updates: int) -> None:
    """Drops the records a killed run wrote after its last checkpoint: those updates are
    redone now, and the log must not hold them twice."""
    log_path = save_dir / "train_log.jsonl"
    if not log_path.is_file():
        return
    kept, dropped = [], 0
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            update = json.loads(line).get("update", 0)
        except (ValueError, AttributeError):
            dropped += 1  # a line cut short by the kill
            continue
        if update > num_updates:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        with atomic_text_output(log_path) as file:
            file.write("".join(line + "\n" for line in kept))


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

    def all_reduce(self, context: distributed.DistributedContext, **flags: bool) -> dict[str, bool]:
        """One collective for every statistic of the update and the `flags` (returned true
        when true on any rank); no collective on a single process."""
        if not context.is_distributed:
            return flags
        flag_keys, number_keys, tensor_keys = (
            sorted(flags),
            sorted(self.numbers),
            sorted(self.tensors),
        )
        host = torch.tensor(
            [
                *(float(flags[k]) for k in flag_keys),
                self.sample_size,
                *(self.numbers[k] for k in number_keys),
            ],
            dtype=torch.float64,
            device=context.device,
        )
        packed = torch.cat([host, *(self.tensors[k].reshape(1) for k in tensor_keys)])
        distributed.all_reduce_sum(packed, context)
        summed_host = packed[: len(host)].tolist()
        summed_flags, summed_host = summed_host[: len(flag_keys)], summed_host[len(flag_keys) :]
        self.sample_size = summed_host[0]
        self.numbers = dict(zip(number_keys, summed_host[1:]))
        self.tensors = {k: packed[len(host) + i] for i, k in enumerate(tensor_keys)}
        return {k: v > 0 for k, v in zip(flag_keys, summed_flags)}

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


def handle_out_of_memory(cfg: TrainConfig, progress: Progress, sample: dict[str, Any]) -> bool:
    """With optimization.skip_oom_batches the update is dropped (returns True); otherwise a
    one-line error with what to change."""
    at = f"update {progress.num_updates + 1} (epoch {progress.epoch})"
    size = sample.get("ntokens", "?")
    if not cfg.optimization.skip_oom_batches:
        raise TrainingError(
            f"out of memory at {at} on a batch of {size} target tokens: lower "
            "dataset.max_tokens (raise optimization.update_freq to keep the update size), "
            "or set optimization.skip_oom_batches=true to skip such batches"
        )
    return True


def as_rank_failure(error: RuntimeError, context: distributed.DistributedContext) -> Exception:
    """A collective that failed because another rank died or timed out becomes one line; other
    RuntimeErrors are bugs and keep their traceback."""
    message = str(error)
    markers = ("gloo", "NCCL", "nccl", "Connection closed", "Connection reset", "timed out",
               "Timeout", "ProcessGroup", "DistBackendError")  # fmt: skip
    is_collective = isinstance(error, torch.distributed.DistError) or any(
        marker in message for marker in markers
    )
    if not (context.is_distributed and is_collective):
        return error
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    # gloo prefixes its source location and appends advice: keep the first sentence.
    first_line = re.sub(r"^\[[^\]]*\]\s*", "", first_line).split(". ")[0].rstrip(".")
    return TrainingError(
        f"rank {context.rank}: lost the other ranks ({first_line}); the rank that failed "
        "printed its own error; checkpoint_last.pt holds the last saved update"
    )


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


def validate_and_save(run: TrainingRun, *, end_of_epoch: bool, validate: bool) -> str:
    """Validates (when asked), tracks the best metric, saves checkpoints; returns a stop
    reason when patience ran out, else ''."""
    cfg, progress = run.cfg, run.progress
    metric_value = None
    if validate and not cfg.dataset.disable_validation:
        with validation_model(run) as model:
            stats = validation.validate(
                cfg, run.task, model, run.criterion, run.context, run.logger
            )
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
        run.logger.record("valid", stats, progress.num_updates)
        if end_of_epoch:
            run.lr_scheduler.step(progress.epoch, stats.get("loss"))
    elif end_of_epoch:
        run.lr_scheduler.step(progress.epoch, None)
    if not cfg.checkpoint.no_save:
        is_best = (
            metric_value is not None
            and progress.best_metric == metric_value
            and progress.validations_without_improvement == 0
        )
        save_training_checkpoints(run, end_of_epoch=end_of_epoch, is_best=is_best)
    patience = cfg.checkpoint.patience
    if patience > 0 and progress.validations_without_improvement >= patience:
        return (
            f"no improvement of {cfg.checkpoint.best_checkpoint_metric} in {patience} validations"
        )
    return ""


@contextlib.contextmanager
def validation_model(run: TrainingRun) -> Any:
    """The model itself, or under FSDP an unsharded replica on each rank: decoding runs a
    different number of forward passes per rank, which sharded layers (gathering their
    weights in every forward) cannot do without hanging."""
    if not distributed.is_sharded(run.model):
        yield run.model
        return
    replica = run.task.build_model(run.cfg.model).to(run.context.device)
    replica.load_state_dict(distributed.full_model_state_dict(run.model, rank0_only=False))
    try:
        yield replica
    finally:
        del replica


def is_better(value: float, best: float | None, cfg: TrainConfig) -> bool:
    if best is None:
        return True
    return value > best if cfg.checkpoint.maximize_best_checkpoint_metric else value < best


def save_training_checkpoints(run: TrainingRun, *, end_of_epoch: bool, is_best: bool) -> None:
    """checkpoint_last.pt always; checkpoint_<epoch>_<update>.pt at save intervals;
    checkpoint_best.pt when the validation metric improved. One serialisation for all.
    Every rank takes part (FSDP gathers the shards); rank 0 writes."""
    cfg, progress = run.cfg, run.progress
    model_state = distributed.full_model_state_dict(run.model)
    optimizer_state = distributed.full_optimizer_state_dict(run.model, run.optimizer.optimizer)
    if not run.context.is_main_process:
        return
    state = {
        "config": config_to_dict(cfg),
        "model": model_state,
        "task": run.task.state_dict(),
        "data_fingerprint": run.task.data_fingerprint(),
        "training_state": {
            "optimizer": optimizer_state,
            "lr_scheduler": run.lr_scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng_state(run.context.device),
            "iterator": run.train_iterator.state_dict(),
            "progress": progress.__dict__.copy(),
        },
    }
    save_dir = run.save_dir
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
