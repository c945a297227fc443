"""`nmtkit-train`: trains a model from Hydra key=value settings or an experiment YAML."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from nmtkit.config.launcher import run_cli
from nmtkit.config.train import TRAIN_GROUPS, TrainConfig
from nmtkit.preemption import PREEMPTED_EXIT_CODE
from nmtkit.trainer import Preempted, train


def main(cfg: TrainConfig) -> None:
    """Train a model; checkpoints and logs go to checkpoint.save_dir.

    Example:
        nmtkit-train task.data=data-bin model=transformer_small \\
            criterion=label_smoothed_cross_entropy criterion.label_smoothing=0.1 \\
            optimizer=adam optimizer.lr=7e-4 'optimizer.betas=[0.9,0.98]' \\
            lr_scheduler=inverse_sqrt lr_scheduler.warmup_updates=1000 \\
            dataset.max_tokens=4096 optimization.max_update=1500 checkpoint.save_dir=ckpt

    Experiment files: nmtkit-train --config-dir DIR --config-name NAME [key=value ...]
    Print the composed config without training: nmtkit-train ... --cfg
    Show groups, options and every setting with its help: nmtkit-train --help [model=...]

    On SIGTERM or SIGUSR1 (a scheduler's warning) the current update is finished,
    checkpoint_last.pt written, and the exit code is 75; a second signal stops at once.
    """
    try:
        train(cfg)
    except Preempted as stopped:
        print(f"nmtkit-train: {stopped}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main,
        config_name="nmtkit_train",
        config_class=TrainConfig,
        groups=TRAIN_GROUPS,
        top_level={"nmtkit_train": TrainConfig},
        argv=argv,
        program="nmtkit-train",
    )


if __name__ == "__main__":
    cli_main()
