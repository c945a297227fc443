"""`nmtkit-runs`: a table of the training runs under some folders, and a plot of their curves.

A read-only listing: it takes folders as positional arguments (like `ls`) and two key=value
settings, so it parses its own command line rather than composing a Hydra config.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from nmtkit.config.launcher import user_errors_as_one_line
from nmtkit.errors import ConfigError
from nmtkit.runs import (
    TABLE_FORMATS,
    check_plot_path,
    find_run_dirs,
    format_table,
    read_run,
    table_rows,
    write_plot,
)
from nmtkit.version import __version__

PROGRAM = "nmtkit-runs"


@dataclass(kw_only=True)
class RunsConfig:
    """Which run directories to list, and how."""

    dirs: list[str] = field(default_factory=lambda: ["."])
    """Folders searched (recursively) for run directories; given as positional arguments."""
    format: str = "markdown"
    """Table on stdout: markdown (aligned columns), csv or json."""
    plot: Optional[str] = None
    """Also draw loss, learning rate and BLEU/WER of the runs into this .png/.svg/.pdf file
    (needs nmtkit[plot]); --plot FILE works too."""

    def validate(self) -> list[str]:
        errors = []
        if self.format not in TABLE_FORMATS:
            errors.append(f"format={self.format}: choose {', '.join(TABLE_FORMATS)}")
        if self.plot == "":
            errors.append("plot=: give an image file name, e.g. plot=runs.png")
        return errors


def main(cfg: RunsConfig) -> list[dict[str, Any]]:
    """Lists the training runs found under the given folders (default: the current one).

    Example:
        nmtkit-runs runs/
        nmtkit-runs runs/de-en runs/en-de format=csv > runs.csv
        nmtkit-runs runs/ --plot runs.png

    A run directory is any folder with config.yaml and train_log.jsonl (what nmtkit-train
    writes in checkpoint.save_dir). Each row: the run (path relative to the current folder),
    its short experiment id, status (running, finished or stopped, and why), updates, epoch,
    best validation loss, BLEU and WER (those logged), training time, then only the settings
    whose values differ between the listed runs. format=json prints every field in full
    (seconds, the whole reason) for scripts; see docs/experiments.md.
    """
    errors = cfg.validate()
    if errors:
        raise ConfigError("invalid settings: " + "; ".join(errors))
    if cfg.plot is not None:
        check_plot_path(cfg.plot)
    runs = [read_run(run_dir) for run_dir in find_run_dirs(cfg.dirs)]
    rows = table_rows(runs)
    print(format_table(rows, cfg.format))
    if cfg.plot is not None:
        path = write_plot(runs, cfg.plot)
        print(f"plotted {len(runs)} run(s): {path}", file=sys.stderr)
    return rows


SETTINGS = ("format", "plot")


def parse_argv(argv: Sequence[str]) -> RunsConfig | str:
    """The config of a command line, or "help" / "version" when one of those was asked."""
    dirs: list[str] = []
    settings: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            return "help"
        if arg in ("-V", "--version"):
            return "version"
        if arg == "--plot" or arg.startswith("--plot="):
            if "=" in arg:
                settings["plot"] = arg.split("=", 1)[1]
            elif args:
                settings["plot"] = args.pop(0)
            else:
                raise ConfigError("--plot needs a file name, e.g. --plot runs.png")
        elif arg.startswith("-") and not os.path.exists(arg):
            raise ConfigError(f"unknown option '{arg}' (settings: format=..., plot=...; --help)")
        elif "=" in arg and arg.split("=", 1)[0] in SETTINGS:
            key, value = arg.split("=", 1)
            settings[key] = value
        elif "=" in arg and not os.path.exists(arg) and "/" not in arg.split("=", 1)[0]:
            # Sweep folders may be named `lr=0.001`: only a path that does not exist is a typo.
            raise ConfigError(f"{arg}: no such setting or folder (settings: {', '.join(SETTINGS)})")
        else:
            dirs.append(arg)
    return RunsConfig(dirs=dirs or ["."], **settings)


def print_help() -> None:
    import inspect

    from nmtkit.config.launcher import field_docs

    print(f"usage: {PROGRAM} [DIR ...] [format=markdown|csv|json] [plot=FILE | --plot FILE]\n")
    print(inspect.cleandoc(main.__doc__ or ""))
    print("\nSettings (key=value):")
    docs = field_docs(RunsConfig)
    for setting in fields(RunsConfig):
        if setting.name in SETTINGS:
            default = getattr(RunsConfig(), setting.name)
            shown = "null" if default is None else default
            print(f"  {setting.name}={shown}    # {docs.get(setting.name, '')}")


def cli_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: one line on stderr and exit status 1 on user mistakes."""
    with user_errors_as_one_line(PROGRAM):
        parsed = parse_argv(sys.argv[1:] if argv is None else argv)
        if parsed == "help":
            print_help()
        elif parsed == "version":
            print(f"{PROGRAM} {__version__}")
        else:
            assert isinstance(parsed, RunsConfig)
            main(parsed)


if __name__ == "__main__":
    cli_main()
