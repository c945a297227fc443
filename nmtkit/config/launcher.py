"""Runs a CLI's typed `main(cfg)` from Hydra `key=value` overrides.

We use Hydra's compose API rather than `@hydra.main`: no `outputs/` folders, no change of
working directory, no logging takeover, and every user mistake (unknown key, wrong type,
invalid value) ends as one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmtkit.errors import ConfigError, NmtkitError
from nmtkit.output_files import describe_os_error, is_user_os_error
from nmtkit.registry import Registry
from nmtkit.version import __version__

PLUGIN_ENTRY_POINT_GROUP = "nmtkit.plugins"
_imported_user_dirs: set[str] = set()


def import_user_dir(path: str) -> None:
    """Imports a research fork's folder (a package or a single .py file) so it can register."""
    resolved = Path(path).expanduser().resolve()
    if str(resolved) in _imported_user_dirs:
        return
    if not resolved.exists():
        raise ConfigError(f"common.user_dir={path}: no such file or folder")
    if resolved.is_dir():
        init_file = resolved / "__init__.py"
        if not init_file.exists():
            raise ConfigError(f"common.user_dir={path}: folder has no __init__.py to import")
        module_name, location = resolved.name, init_file
        search = [str(resolved)]
    else:
        module_name, location, search = resolved.stem, resolved, None
    if module_name in sys.modules:
        raise ConfigError(
            f"common.user_dir={path}: a module named '{module_name}' is already imported; "
            "rename the folder"
        )
    spec = importlib.util.spec_from_file_location(
        module_name, location, submodule_search_locations=search
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    _imported_user_dirs.add(str(resolved))


def load_installed_plugins() -> None:
    """Imports every installed package that declares the `nmtkit.plugins` entry point."""
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_ENTRY_POINT_GROUP):
        entry_point.load()


def store_configs(top_level: dict[str, type], groups: dict[str, Registry[Any]]) -> None:
    """Registers top-level configs and every registry entry/preset as Hydra config nodes."""
    store = ConfigStore.instance()
    for name, config_class in top_level.items():
        store.store(name=name, node=config_class)
    for group, registry in groups.items():
        for option, config in registry.options().items():
            store.store(group=group, name=option, node=config)


def _split_argv(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    flags: dict[str, Any] = {}
    overrides: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help", "--cfg", "--version", "-V", "-m", "--multirun"):
            flags[{"-V": "version", "-m": "multirun"}.get(arg, arg.lstrip("-"))] = True
        elif arg.startswith(("--config-dir", "--config-name", "-cd", "-cn")):
            key = "config_dir" if arg.startswith(("--config-dir", "-cd")) else "config_name"
            if "=" in arg:
                flags[key] = arg.split("=", 1)[1]
            elif args:
                flags[key] = args.pop(0)
            else:
                raise ConfigError(f"{arg} needs a value")
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}': settings are key=value (see --help)")
        elif arg.startswith("hydra/launcher="):
            flags["launcher"] = arg.split("=", 1)[1]
        elif arg.startswith("hydra.launcher.") and "=" in arg:
            key, value = arg[len("hydra.launcher.") :].split("=", 1)
            launcher_settings = flags.setdefault("launcher_settings", {})
            launcher_settings[key] = yaml.safe_load(value)  # type: ignore[index]
        elif arg.split("=", 1)[0].lstrip("+~").startswith("hydra."):
            # The compose API has no Hydra run directory or job settings: never ignore them.
            raise ConfigError(
                f"{arg}: hydra.* settings are not used by nmtkit (no outputs/ folder, no change "
                "of working directory); the run directory is checkpoint.save_dir"
            )
        else:
            overrides.append(arg)
    return flags, overrides


def compose_config(
    config_name: str,
    overrides: Sequence[str],
    config_class: type,
    config_dir: str | None = None,
    validate: bool = True,
    groups: dict[str, Registry[Any]] | None = None,
) -> Any:
    """Composes, converts to dataclass objects and validates; raises ConfigError on mistakes."""
    try:
        if config_dir is not None:
            directory = Path(config_dir).expanduser().resolve()
            if not directory.is_dir():
                raise ConfigError(f"--config-dir {config_dir}: no such folder")
            context = initialize_config_dir(version_base=None, config_dir=str(directory))
        else:
            context = initialize(version_base=None, config_path=None)
        with context:
            composed = compose(config_name=config_name, overrides=list(overrides))
        unknown = unknown_keys(
            OmegaConf.to_container(composed, resolve=False), config_class, groups
        )
        if unknown:
            raise ConfigError(
                f"{unknown[0]}: no such setting (added with '+'?); settings are listed by "
                "--help, and a key added with '+' would be ignored"
            )
        config = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as error:
        cause = error.__cause__
        detail = f"; {one_line(str(cause))}" if cause is not None and str(cause) else ""
        raise ConfigError(one_line(str(error)) + detail) from None
    if not isinstance(config, config_class):
        raise ConfigError(
            f"config '{config_name}' does not build a {config_class.__name__}; "
            f"an experiment file must list '{config_name}'s schema in its defaults"
        )
    errors = collect_validation_errors(config) if validate else []
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    return config


def unknown_keys(
    values: Any, schema: Any, groups: dict[str, Registry[Any]] | None = None, prefix: str = ""
) -> list[str]:
    """Keys of the composed config that no dataclass field declares (`+foo=1` appends them, and
    converting to the dataclass would drop them silently)."""
    if not isinstance(values, dict) or not dataclasses.is_dataclass(schema):
        return []
    fields = {field.name: field for field in dataclasses.fields(schema)}
    found = []
    for key, value in values.items():
        if key not in fields:
            found.append(f"{prefix}{key}")
            continue
        if not isinstance(value, dict):
            continue
        child: Any = None
        if fields[key].default_factory is not dataclasses.MISSING:
            child = fields[key].default_factory
        elif groups and not prefix and key in groups and value.get("_name"):
            try:
                child = groups[key].entry(value["_name"]).config_class
            except NmtkitError:
                child = None
        if dataclasses.is_dataclass(child):
            found += unknown_keys(value, child, None, f"{prefix}{key}.")
    return found


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's multirun semantics: `key=a,b` (also range(), choice(), glob()) sweeps; the
    Cartesian product of all swept keys, in the order given, each a list of overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(one_line(str(error))) from None
    runs: list[list[str]] = [[]]
    for override, line in zip(parsed, overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values = [line]
        runs = [run + [value] for run in runs for value in values]
    return runs


def swept_keys(overrides: Sequence[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


def run_sweep(
    main: Callable[[Any], Any],
    program: str,
    name: str,
    overrides: Sequence[str],
    config_class: type,
    directory: str | None,
    groups: dict[str, Registry[Any]],
    launcher: str | None = None,
    launcher_settings: dict[str, Any] | None = None,
) -> None:
    """Runs every combination in turn (or submits them: `launcher`). A save_dir with ${...} interpolations names each run
    itself; otherwise each run gets a subfolder named by its swept settings. Every config is
    composed and validated before the first run starts."""
    keys = swept_keys(overrides)
    if not keys:
        raise ConfigError("-m/--multirun: no setting to sweep (give one as key=a,b,c)")
    plans = []
    for run_overrides in expand_sweep(overrides):
        config = compose_config(name, run_overrides, config_class, directory, groups=groups)  # type: ignore[arg-type]
        checkpoint = getattr(config, "checkpoint", None)
        save_dir_override = next(
            (o for o in run_overrides if o.lstrip("+").startswith("checkpoint.save_dir=")), ""
        )
        swept = [o.lstrip("+~") for o in run_overrides if o.split("=", 1)[0].lstrip("+~") in keys]
        if checkpoint is not None and "${" not in save_dir_override:
            checkpoint.save_dir = str(Path(checkpoint.save_dir) / ",".join(swept))
        plans.append((swept, config))
    directories = [getattr(getattr(c, "checkpoint", None), "save_dir", None) for _, c in plans]
    if None not in directories and len(set(directories)) < len(directories):
        raise ConfigError(
            "-m/--multirun: several runs resolve to the same checkpoint.save_dir; put every "
            "swept key in it (e.g. checkpoint.save_dir='runs/lr${optimizer.lr}') or leave it "
            "without ${...} to get one subfolder per run"
        )
    if launcher is not None:
        submit_sweep(main, program, plans, directories, launcher, launcher_settings or {})
        return
    failed = []
    for index, (swept, config) in enumerate(plans, 1):
        where = f" -> {directories[index - 1]}" if directories[index - 1] else ""
        print(
            f"{program}: sweep run {index}/{len(plans)}: {' '.join(swept)}{where}", file=sys.stderr
        )
        try:
            main(config)
        except NmtkitError as error:
            print(f"{program}: error: {error}", file=sys.stderr)
            failed.append(" ".join(swept))
    if failed:
        raise ConfigError(f"{len(failed)} of {len(plans)} sweep runs failed: {'; '.join(failed)}")


# Hydra's submitit launcher settings that submitit names the same for every cluster; the
# others are Slurm's own (slurm_<name> in submitit).
SUBMITIT_COMMON = {"timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node",
                   "tasks_per_node", "name", "stderr_to_stdout"}  # fmt: skip
SUBMITIT_LAUNCHERS = {"submitit_local": "local", "submitit_slurm": "slurm"}


def submit_sweep(
    main: Callable[[Any], Any],
    program: str,
    plans: list[tuple[list[str], Any]],
    directories: list[Any],
    launcher: str,
    settings: dict[str, Any],
) -> None:
    """`hydra/launcher=submitit_slurm` (or submitit_local): one submitit job per sweep run,
    with Hydra's submitit launcher settings (`hydra.launcher.partition=...`); waits for all."""
    if launcher not in SUBMITIT_LAUNCHERS:
        raise ConfigError(
            f"hydra/launcher={launcher}: choose {', '.join(SUBMITIT_LAUNCHERS)} (sweeps run one "
            "after another without a launcher)"
        )
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            f"hydra/launcher={launcher} needs submitit: pip install nmtkit[slurm]"
        ) from None
    cluster = SUBMITIT_LAUNCHERS[launcher]
    settings = dict(settings)
    folder = settings.pop("submitit_folder", ".submitit/%j")
    parameters = {}
    for key, value in settings.items():
        if key in SUBMITIT_COMMON:
            parameters[key] = value
        elif cluster == "slurm":
            parameters[f"slurm_{key}"] = value
        else:
            raise ConfigError(f"hydra.launcher.{key}: not a setting of {launcher}")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    try:
        executor.update_parameters(**parameters)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"hydra/launcher={launcher}: {one_line(str(error))}") from None
    jobs = [executor.submit(main, config) for _, config in plans]
    for index, ((swept, _), job) in enumerate(zip(plans, jobs), 1):
        where = f" -> {directories[index - 1]}" if directories[index - 1] else ""
        print(f"{program}: submitted sweep run {index}/{len(plans)} as job {job.job_id}: "
              f"{' '.join(swept)}{where}", file=sys.stderr)  # fmt: skip
    failed = []
    for (swept, _), job in zip(plans, jobs):
        try:
            job.result()
        except Exception as error:  # submitit re-raises the job's exception with its log
            first_line = next((line for line in str(error).splitlines() if line.strip()), "")
            failed.append(f"{' '.join(swept)} (job {job.job_id}: {first_line})")
    if failed:
        raise ConfigError(f"{len(failed)} of {len(plans)} sweep jobs failed: {'; '.join(failed)}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain containers (what runs save), without Hydra's defaults list."""
    container = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    assert isinstance(container, dict)
    container.pop("defaults", None)
    return container  # type: ignore[return-value]


def config_to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(config_to_dict(config))


def one_line(message: str) -> str:
    """Hydra/OmegaConf messages span lines; keep what names the key and the problem."""
    lines = []
    for line in message.strip().splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not line.startswith(("full_key:", "object_type", "reference_type")):
            lines.append(line)
    text = "; ".join(lines)
    return text.replace(":; ", ": ").replace(".; ", "; ")


def collect_validation_errors(config: Any, prefix: str = "") -> list[str]:
    """Calls `validate()` on every dataclass in the tree; messages are prefixed with the key path."""
    errors: list[str] = []
    if not dataclasses.is_dataclass(config):
        return errors
    validate = getattr(config, "validate", None)
    if callable(validate):
        errors.extend(f"{prefix}{message}" for message in validate())
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            errors.extend(collect_validation_errors(value, f"{prefix}{field.name}."))
    return errors


def field_docs(config_class: type) -> dict[str, str]:
    """Reads the one-line docstrings written under dataclass fields (fairseq2 style)."""
    docs: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def field_value(config: Any, field: dataclasses.Field) -> Any:
    """The value of a field of a config object, or its default when `config` is the class."""
    if not isinstance(config, type):
        return getattr(config, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "???"  # required: no default


def show_value(value: Any) -> str:
    """One line per setting, written as it is typed on the command line ([0.9,0.98])."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{show_value(item)}" for key, item in value.items()) + "}"
    return OmegaConf.to_yaml({"v": value}).strip()[3:]


def describe_config(config: Any, prefix: str = "") -> list[str]:
    """Lines `key=default  # doc` for every field of a config dataclass (an object, or the class
    for its defaults), recursively."""
    lines: list[str] = []
    docs = field_docs(config if isinstance(config, type) else type(config))
    for field in dataclasses.fields(config):
        if field.name.startswith("_") or field.name == "defaults":
            continue
        value = field_value(config, field)
        if dataclasses.is_dataclass(value):
            lines.extend(describe_config(value, f"{prefix}{field.name}."))
            continue
        shown = show_value(value)
        doc = docs.get(field.name, "")
        lines.append(f"  {prefix}{field.name}={shown}" + (f"    # {doc}" if doc else ""))
    return lines


def _print_help(
    program: str, main: Callable[..., Any], groups: dict[str, Registry[Any]], config: Any
) -> None:
    print(inspect.cleandoc(main.__doc__ or program))
    if groups:
        print("\nConfig groups (choose with group=option, e.g. model=transformer_base):")
        for group, registry in groups.items():
            print(f"  {group}: {', '.join(registry.names())}")
    if config is not None:
        print("\nSettings with the chosen options (override with key=value):")
        print("\n".join(describe_config(config)))


@contextlib.contextmanager
def user_errors_as_one_line(program: str) -> Iterator[None]:
    """What every console script does with user mistakes: one line on stderr and a non-zero
    exit, no traceback (bugs keep theirs)."""
    try:
        yield
    except NmtkitError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `nmtkit-generate ... | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as error:
        # A full or read-only disk is the user's situation, not a bug: one line, no traceback.
        if not is_user_os_error(error):
            raise
        print(f"{program}: error: {describe_os_error(error)}", file=sys.stderr)
        sys.exit(1)


def run_cli(
    main: Callable[[Any], Any],
    *,
    config_name: str,
    config_class: type,
    groups: dict[str, Registry[Any]],
    top_level: dict[str, type],
    argv: Sequence[str] | None = None,
    program: str | None = None,
) -> None:
    """Entry point shared by the console scripts; exits non-zero with one line on user mistakes."""
    program = program or Path(sys.argv[0]).name
    with user_errors_as_one_line(program):
        flags, overrides = _split_argv(sys.argv[1:] if argv is None else argv)
        load_installed_plugins()
        for override in overrides:
            key, _, value = override.partition("=")
            if key.lstrip("+") in ("common.user_dir", "user_dir") and value:
                import_user_dir(value)
        store_configs(top_level, groups)
        name = str(flags.get("config_name", config_name))
        directory = flags.get("config_dir")
        if flags.get("version"):
            print(f"{program} {__version__}")
            return
        if flags.get("h") or flags.get("help"):
            try:
                config = compose_config(name, overrides, config_class, directory, validate=False)  # type: ignore[arg-type]
            except ConfigError:
                # Required settings (nmtkit-score's hyp/ref) are unset: describe the defaults.
                config = config_class
            _print_help(program, main, groups, config)
            return
        if flags.get("launcher") and not flags.get("multirun"):
            raise ConfigError("hydra/launcher: launchers run sweeps; add -m (--multirun)")
        if flags.get("multirun"):
            run_sweep(main, program, name, overrides, config_class, directory, groups,  # type: ignore[arg-type]
                      flags.get("launcher"), flags.get("launcher_settings"))  # type: ignore[arg-type]  # fmt: skip
            return
        config = compose_config(name, overrides, config_class, directory, groups=groups)  # type: ignore[arg-type]
        if flags.get("cfg"):
            print(config_to_yaml(config), end="")
            return
        main(config)
