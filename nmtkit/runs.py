"""Reads run directories back (what `nmtkit-train` wrote in `checkpoint.save_dir`): the table
of `nmtkit-runs` (status, progress, best metrics and the settings that differ between runs)
and the plot of their curves (`nmtkit-runs --plot`, `common.plot=true`).

Only the run's small files are read: config.yaml, env.json, train_log.jsonl, train.lock and
run_status.json (checkpoint_last.pt only when the log holds no update yet). This module
imports neither torch nor matplotlib at load time, so listing runs starts fast and plotting
stays an optional extra (`pip install 'nmtkit[plot]'`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmtkit.errors import ConfigError, DataError
from nmtkit.output_files import ensure_writable_file, write_atomically
from nmtkit.run_lock import LOCK_NAME, _process_alive

CONFIG_FILE = "config.yaml"
LOG_FILE = "train_log.jsonl"
ENV_FILE = "env.json"
# Written by nmtkit.run_log.write_run_status; not imported from there because run_log
# imports torch, which a listing does not need.
RUN_STATUS_FILE = "run_status.json"
CHECKPOINT_FILE = "checkpoint_last.pt"

# Settings that differ between any two runs without saying anything about the experiment.
IGNORED_KEYS = ("checkpoint.save_dir", "common.tensorboard_logdir")

TABLE_FORMATS = ("markdown", "csv", "json")
PLOT_FORMATS = ("png", "svg", "pdf")
# A reason longer than this (an error message) is cut in the markdown table; csv/json keep it.
MAX_REASON_CHARS = 60


@dataclass
class RunRecord:
    """What one run directory says about its run."""

    path: Path
    """The run directory (checkpoint.save_dir)."""
    config: dict[str, Any]
    """The resolved config, flattened to dotted keys (optimizer.lr)."""
    experiment_id: str | None
    """env.json's (or run.json's) experiment id; None for runs that predate it."""
    status: str
    """running, finished or stopped."""
    reason: str
    """Why it finished or stopped (run_status.json), or how the status was inferred."""
    updates: int | None
    """Updates done (run_status.json, else the log's highest update)."""
    epoch: int | None
    """The epoch the run ended in, or is in."""
    wall_seconds: float | None
    """Training time in seconds (the log's `wall`), without setup and validation gaps."""
    best: dict[str, float]
    """Best validation values found in the log: valid_loss, bleu, wer (those present)."""
    train_records: list[dict[str, Any]] = field(default_factory=list)
    """The log's training records ({"update", "loss", "lr", ...}), in order."""
    valid_records: list[dict[str, Any]] = field(default_factory=list)
    """The log's validation records ({"update", "loss", "bleu", "wer", ...}), in order."""


# Best value of each validation metric the table shows: (column, log key, higher is better).
BEST_METRICS = (("valid_loss", "loss", False), ("bleu", "bleu", True), ("wer", "wer", False))


# --------------------------------------------------------------------------------------------
# Finding and reading run directories
# --------------------------------------------------------------------------------------------
def is_run_dir(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / LOG_FILE).is_file()


def find_run_dirs(folders: Sequence[str | Path]) -> list[Path]:
    """Run directories under each folder (the folder itself included), sorted by path; the
    search does not descend into a run directory nor into hidden folders (.git, .venv)."""
    found: dict[Path, None] = {}
    for folder in folders:
        root = Path(folder)
        if not root.exists():
            raise ConfigError(f"{folder}: no such folder")
        if not root.is_dir():
            raise ConfigError(f"{folder}: is a file; give the folder that holds run directories")
        in_folder = []
        for current, subfolders, _ in os.walk(root, onerror=_raise_walk_error):
            if is_run_dir(Path(current)):
                in_folder.append(Path(current))
                subfolders.clear()
            else:
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        if not in_folder:
            raise DataError(
                f"{folder}: no run directories found (a run directory holds {CONFIG_FILE} "
                f"and {LOG_FILE}, as nmtkit-train writes them in checkpoint.save_dir)"
            )
        for run_dir in in_folder:
            found.setdefault(run_dir.resolve(), None)
    return sorted(found)


def _raise_walk_error(error: OSError) -> None:
    # An unreadable folder would otherwise be skipped silently, hiding the runs inside it.
    raise DataError(f"{error.filename}: cannot read ({error.strerror or error})")


def read_run(path: str | Path) -> RunRecord:
    """Reads one run directory; DataError names the file (and line) that cannot be read."""
    run_dir = Path(path)
    if not is_run_dir(run_dir):
        raise DataError(f"{path}: not a run directory (needs {CONFIG_FILE} and {LOG_FILE})")
    config = _read_config(run_dir / CONFIG_FILE)
    env = _read_json_object(run_dir / ENV_FILE)
    identity = env.get("experiment_id") or _read_json_object(run_dir / "run.json").get(
        "experiment_id"
    )
    records = _read_log(run_dir / LOG_FILE)
    train_records = [r for r in records if r.get("kind") == "train"]
    valid_records = [r for r in records if r.get("kind") == "valid"]
    status, reason, ended = run_status(run_dir)

    updates = _highest(records, "update")
    epoch = _highest(records, "epoch")
    if _is_number(ended.get("updates")):
        updates = ended["updates"]
    if _is_number(ended.get("epoch")):
        epoch = ended["epoch"]
    walls = [r["wall"] for r in records if _is_number(r.get("wall"))]
    wall_seconds = float(max(walls)) if walls else None
    if updates is None or wall_seconds is None:
        progress = _checkpoint_progress(run_dir / CHECKPOINT_FILE)
        if updates is None and "num_updates" in progress:
            updates, epoch = progress["num_updates"], progress.get("epoch", epoch)
        if wall_seconds is None and _is_number(progress.get("train_seconds")):
            wall_seconds = float(progress["train_seconds"])

    best = {}
    for column, key, higher_is_better in BEST_METRICS:
        values = [float(r[key]) for r in valid_records if _is_number(r.get(key))]
        if values:
            best[column] = max(values) if higher_is_better else min(values)
    return RunRecord(
        path=run_dir,
        config=flatten_config(config),
        experiment_id=str(identity) if identity else None,
        status=status,
        reason=reason,
        updates=int(updates) if updates is not None else None,
        epoch=int(epoch) if epoch is not None else None,
        wall_seconds=wall_seconds,
        best=best,
        train_records=train_records,
        valid_records=valid_records,
    )


def read_runs(folders: Sequence[str | Path]) -> list[RunRecord]:
    return [read_run(run_dir) for run_dir in find_run_dirs(folders)]


def run_status(run_dir: Path) -> tuple[str, str, dict[str, Any]]:
    """(status, reason, run_status.json's record or {}).

    A train.lock means the training has not ended cleanly: it is running if its process is
    alive, else it was killed (a kill -9 or a crash of the machine leaves its lock behind,
    and a run_status.json beside it is from an earlier attempt). Without a lock the run ended,
    and run_status.json says how; without either it was killed before it could say.
    """
    lock_file = run_dir / LOCK_NAME
    if lock_file.exists():
        try:
            owner = json.loads(lock_file.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return "stopped", f"killed? {LOCK_NAME} is unreadable", {}
        if host != socket.gethostname():
            return "running", f"on host {host}, pid {pid}, not checked from here", {}
        if _process_alive(pid):
            return "running", f"pid {pid}", {}
        return "stopped", f"killed? pid {pid} ended without removing {LOCK_NAME}", {}
    ended = _read_json_object(run_dir / RUN_STATUS_FILE)
    if ended.get("status") in ("finished", "stopped"):
        return str(ended["status"]), str(ended.get("reason") or ""), ended
    return "stopped", f"killed? no {RUN_STATUS_FILE}", {}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a mapping of settings, found {type(config).__name__}")
    return config


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in an optional file; {} when the file does not exist."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object")
    return value


def _read_log(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            if number == len(lines):
                # The last line without its newline: a record being written, or cut by a kill.
                break
            raise DataError(f"{path}:{number}: not a JSON record ({error})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object")
        records.append(record)
    return records


def _checkpoint_progress(path: Path) -> dict[str, Any]:
    """The saved progress counters of checkpoint_last.pt, or {} (no checkpoint, unreadable).
    mmap keeps a large checkpoint from being read into memory for a few counters."""
    if not path.is_file():
        return {}
    import torch  # only needed for runs whose log holds no update yet

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        progress = state["training_state"]["progress"]
    except Exception:  # noqa: BLE001 - a missing count must not hide the other runs
        return {}
    return dict(progress) if isinstance(progress, dict) else {}


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _highest(records: list[dict[str, Any]], key: str) -> int | None:
    values = [int(record[key]) for record in records if _is_number(record.get(key))]
    return max(values) if values else None


# --------------------------------------------------------------------------------------------
# Settings that differ
# --------------------------------------------------------------------------------------------
def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 5e-4}} -> {"optimizer.lr": 5e-4}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and key == "defaults":
            continue
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_MISSING = object()


def differing_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Config keys whose values are not the same in all runs (a key absent from some runs
    differs), in the order the configs list them; paths that always differ are left out."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    differing = []
    for key in keys:
        if key in IGNORED_KEYS:
            continue
        values = {_canonical(run.config.get(key, _MISSING)) for run in runs}
        if len(values) > 1:
            differing.append(key)
    return differing


def _canonical(value: Any) -> str:
    if value is _MISSING:
        return "\0missing"
    return json.dumps(value, sort_keys=True, default=str)


def show_value(value: Any) -> str:
    """A setting as it is typed on the command line: null, true, 0.0005, [0.9,0.98]."""
    if value is _MISSING:
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(show_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{show_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def run_labels(runs: Sequence[RunRecord]) -> list[str]:
    """Each run's differing settings (`optimizer.lr=0.001 model.dropout=0.3`), or its folder
    name when nothing differs; runs with the same settings get their folder name added."""
    keys = differing_keys(runs)
    labels = [
        " ".join(f"{key}={show_value(run.config.get(key, _MISSING))}" for key in keys)
        for run in runs
    ]
    if not keys:
        return [run.path.name or str(run.path) for run in runs]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [
        f"{run.path.name}: {label}" if label in repeated else label
        for run, label in zip(runs, labels)
    ]


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
def table_rows(runs: Sequence[RunRecord], cwd: str | Path | None = None) -> list[dict[str, Any]]:
    """One JSON-ready dict per run: run (path relative to cwd), experiment_id, status, reason,
    updates, epoch, best_valid_loss, best_bleu, best_wer, wall_seconds (None when unknown) and
    config (the differing settings only; a setting a run's config does not have is left out)."""
    keys = differing_keys(runs)
    base = Path(cwd) if cwd is not None else Path.cwd()
    rows = []
    for run in runs:
        rows.append(
            {
                "run": _relative(run.path, base),
                "experiment_id": run.experiment_id,
                "status": run.status,
                "reason": run.reason,
                "updates": run.updates,
                "epoch": run.epoch,
                "best_valid_loss": run.best.get("valid_loss"),
                "best_bleu": run.best.get("bleu"),
                "best_wer": run.best.get("wer"),
                "wall_seconds": run.wall_seconds,
                "config": {key: run.config[key] for key in keys if key in run.config},
            }
        )
    return rows


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def format_table(rows: Sequence[dict[str, Any]], table_format: str) -> str:
    """The rows of `table_rows` as markdown (aligned, for reading), csv or json (for scripts)."""
    if table_format == "json":
        return json.dumps(list(rows), indent=2)
    if table_format == "csv":
        return _format_csv(rows)
    if table_format == "markdown":
        return _format_markdown(rows)
    raise ConfigError(f"format={table_format}: choose {', '.join(TABLE_FORMATS)}")


def _config_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row["config"]))
    return list(keys)


def _format_csv(rows: Sequence[dict[str, Any]]) -> str:
    fixed = [key for key in (rows[0] if rows else {}) if key != "config"]
    keys = _config_keys(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fixed + keys)
    for row in rows:
        writer.writerow(
            ["" if row[key] is None else row[key] for key in fixed]
            + [show_value(row["config"].get(key, _MISSING)) for key in keys]
        )
    return buffer.getvalue().rstrip("\n")


def _format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    columns: list[tuple[str, Any]] = [
        ("run", lambda row: row["run"]),
        ("id", lambda row: (row["experiment_id"] or "-")[:8]),
        ("status", _status_text),
        ("updates", lambda row: _show_number(row["updates"], "{:d}")),
        ("epoch", lambda row: _show_number(row["epoch"], "{:d}")),
        ("valid loss", lambda row: _show_number(row["best_valid_loss"], "{:.3f}")),
        ("BLEU", lambda row: _show_number(row["best_bleu"], "{:.2f}")),
        ("WER", lambda row: _show_number(row["best_wer"], "{:.2f}")),
        ("wall", lambda row: format_duration(row["wall_seconds"])),
    ]
    # Columns nobody has a value for (no experiment ids yet, no BLEU in ASR runs) are dropped.
    optional = {"id": "experiment_id", "valid loss": "best_valid_loss", "BLEU": "best_bleu"}
    optional.update({"WER": "best_wer", "wall": "wall_seconds"})
    columns = [
        (title, cell)
        for title, cell in columns
        if title not in optional or any(row[optional[title]] is not None for row in rows)
    ]
    for key in _config_keys(rows):
        columns.append((key, lambda row, key=key: show_value(row["config"].get(key, _MISSING))))
    header = [title for title, _ in columns]
    body = [[_escape_cell(str(cell(row))) for _, cell in columns] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(header, *body)]
    numeric = {"updates", "epoch", "valid loss", "BLEU", "WER", "wall"}

    def line(cells: Iterable[str]) -> str:
        padded = [
            text.rjust(width) if title in numeric else text.ljust(width)
            for text, width, title in zip(cells, widths, header)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (width + 1) + ":" if title in numeric else "-" * (width + 2)
        for width, title in zip(widths, header)
    )
    return "\n".join([line(header), rule + "|", *(line(cells) for cells in body)])


def _status_text(row: dict[str, Any]) -> str:
    reason = " ".join(str(row["reason"]).split())
    if row["status"] == "running" and reason.startswith("pid "):
        return "running"
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return f"{row['status']} ({reason})" if reason else row["status"]


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _show_number(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def format_duration(seconds: float | None) -> str:
    """42s, 5m03s, 2h07m."""
    if seconds is None:
        return "-"
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


# --------------------------------------------------------------------------------------------
# The plot
# --------------------------------------------------------------------------------------------
def check_plot_path(output_path: str | Path, key: str = "plot") -> Path:
    """Fails before any work when the image cannot be written or matplotlib is missing."""
    path = Path(output_path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ConfigError(
            f"{key}={output_path}: the file name must end in "
            + ", ".join(f".{name}" for name in PLOT_FORMATS)
        )
    require_matplotlib(key)
    return ensure_writable_file(path, key)


def require_matplotlib(key: str = "plot") -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{key}: plotting needs matplotlib; install nmtkit[plot] (pip install 'nmtkit[plot]')"
        ) from None


def build_figure(runs: Sequence[RunRecord]) -> Any:
    """A matplotlib Figure, without pyplot (no global backend or figure list is touched):
    loss (training solid, validation dashed), learning rate, and BLEU / WER when a run
    has them, against updates; one colour per run, labelled by its differing settings."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("loss (training —, validation --)", None), ("learning rate", "lr")]
    for title, key in (("validation BLEU", "bleu"), ("validation WER", "wer")):
        if any(_points(run.valid_records, key)[0] for run in runs):
            panels.append((title, key))
    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6 * columns, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for unused in axes[len(panels) :]:
        unused.set_visible(False)
    colours = [f"C{index % 10}" for index in range(len(runs))]
    for axis, (title, key) in zip(axes, panels):
        axis.set_title(title)
        axis.set_xlabel("updates")
        axis.grid(True, alpha=0.3)
        for run, label, colour in zip(runs, run_labels(runs), colours):
            if key is None:
                axis.plot(*_points(run.train_records, "loss"), color=colour, label=label)
                axis.plot(
                    *_points(run.valid_records, "loss"), color=colour, linestyle="--", marker="."
                )
            elif key == "lr":
                axis.plot(*_points(run.train_records, "lr"), color=colour)
            else:
                axis.plot(*_points(run.valid_records, key), color=colour, marker=".")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize="small")
    return figure


def _points(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [
        (float(r["update"]), float(r[key]))
        for r in records
        if _is_number(r.get("update")) and _is_number(r.get(key))
    ]
    return [x for x, _ in pairs], [y for _, y in pairs]


def plot_runs(run_dirs: Sequence[str | Path], output_path: str | Path) -> Path:
    """Draws the curves of the runs in `run_dirs` into one image (PNG, SVG or PDF by the
    file's extension), written whole or not at all; returns its path. The trainer calls it
    with its own run directory for `common.plot=true`."""
    path = check_plot_path(output_path)
    return write_plot([read_run(run_dir) for run_dir in run_dirs], path)


def write_plot(runs: Sequence[RunRecord], output_path: str | Path) -> Path:
    """`plot_runs` for runs already read."""
    path = check_plot_path(output_path)
    figure = build_figure(runs)
    image = io.BytesIO()
    figure.savefig(image, format=path.suffix.lower().lstrip("."), dpi=100)
    write_atomically(image.getbuffer(), path)
    return path
