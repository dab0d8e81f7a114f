"""Settings of every command, one way: frozen dataclasses whose fields carry their help text
(units included) and choices; one flag per field; preset < YAML file (local or any URL Beam's
file systems read, e.g. gs://) < explicit flags; errors that name the setting.

Flag spelling: `--name VALUE`; booleans `--name` / `--no-name` (`--no_name` is still read, as
some commands spelled it before); tuples of fixed length take
exactly that many values, tuples of any length zero or more. A nested dataclass field `group`
(the pipeline's `motion`, `noise`, ...) gives flags `--group_name` and a YAML mapping `group:`.
A flag's default is None, meaning "keep the preset's / YAML's value". A field may name short
spellings in its metadata (`setting(..., flag_aliases=("geometry",))` adds `--geometry`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field whose `help` (units included) becomes its flag's help text; metadata
    `choices` limits its values."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def nested_types(cls: type) -> dict[str, type]:
    """The fields of dataclass `cls` that are dataclasses themselves (setting groups), by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def setting_value(name: str, value: Any, hint: Any, choices: Iterable[Any] | None, where: str) -> Any:
    """`value` as setting `name` of type `hint` holds it (lists -> tuples, ints -> floats where a
    float is wanted); ValueError naming the setting and `where` if it cannot be."""
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        fixed = items[-1] is not Ellipsis
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(items)):
            count = f"{len(items)} values" if fixed else "a list"
            raise ValueError(f"setting {name!r} in {where} must be {count}, got {value!r}")
        try:
            if items[0] is int and any(isinstance(v, float) and not v.is_integer() for v in value):
                raise ValueError("not whole numbers")
            return tuple(items[0](v) for v in value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"setting {name!r} in {where} must hold {items[0].__name__} values, got {value!r}") from error
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif hint is not Any and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ValueError(f"setting {name!r} in {where} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    if choices is not None and value not in tuple(choices):
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r} (in {where})")
    return value


def merge_settings(cls: type, base: Mapping[str, Any], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`base` (a `dataclasses.asdict` of `cls`) updated by the (possibly partial, possibly nested)
    mapping `values`; ValueError for an unknown or ill-typed setting, naming it and `where`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    groups = nested_types(cls)
    merged = dict(base)
    for name, value in values.items():
        if name not in fields:
            raise ValueError(f"unknown setting {name!r} in {where}; known: {', '.join(sorted(fields))}")
        if name in groups:
            if not isinstance(value, Mapping):
                raise ValueError(f"setting {name!r} in {where} must be a mapping, got {value!r}")
            merged[name] = merge_settings(groups[name], base[name], value, f"{where}.{name}")
        else:
            merged[name] = setting_value(name, value, hints[name], fields[name].metadata.get("choices"), where)
    return merged


def build_config(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of `cls` from a full mapping (nested groups as mappings), checked by its
    `validate()` when it has one (which raises ValueError naming the setting)."""
    values = dict(values)
    for name, group in nested_types(cls).items():
        values[name] = build_config(group, values[name])
    config = cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


def config_from_layers(cls: type, layers: Iterable[tuple[str, Mapping[str, Any]]]) -> Any:
    """`cls`'s defaults updated by each (where, mapping) layer in turn, e.g. preset, YAML, flags."""
    values = dataclasses.asdict(cls())
    for where, layer in layers:
        values = merge_settings(cls, values, layer, where)
    return build_config(cls, values)


def read_yaml_settings(path: str, open_binary: Callable[[str], Any] | None = None) -> Mapping[str, Any]:
    """The mapping of settings in a YAML file, local or a URL (gs://...) read with Beam's file
    systems; ValueError naming the file if it cannot be read or holds no mapping."""
    try:
        if open_binary is None and "://" not in path:
            with open(path, "rb") as handle:
                data = handle.read()
        else:
            if open_binary is None:
                from apache_beam.io.filesystems import FileSystems

                open_binary = FileSystems.open
            with open_binary(path) as handle:
                data = handle.read()
        loaded = yaml.safe_load(io.BytesIO(data)) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    except (OSError, IOError) as error:
        raise ValueError(f"cannot read the settings file {path}: {error}") from error
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} must hold a mapping of setting: value, got {type(loaded).__name__}")
    return loaded


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return repr(value) if isinstance(value, str) else str(value)


def add_setting_flag(group, flag: str, field: dataclasses.Field, hint: Any, help_text: str) -> None:
    """Adds `--flag` for a setting of type `hint` (module docstring: one spelling for all); a plain
    setting with `flag_aliases` metadata is also spelled `--alias`."""
    if hint is bool:
        group.add_argument(f"--{flag}", dest=flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        group.add_argument(f"--no_{flag}", dest=flag, action="store_false", default=None, help=argparse.SUPPRESS)
    elif typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        fixed = items[-1] is not Ellipsis
        group.add_argument(f"--{flag}", dest=flag, type=items[0], nargs=len(items) if fixed else "*", default=None,
                           metavar=("LOW", "HIGH") if fixed and len(items) == 2 else flag.upper(), help=help_text)
    else:
        choices = field.metadata.get("choices")
        metavar = flag.upper() if not choices or len(choices) > 6 else None
        aliases = [f"--{alias}" for alias in field.metadata.get("flag_aliases", ())]
        group.add_argument(f"--{flag}", *aliases, dest=flag, type=hint, default=None, choices=choices,
                           metavar=metavar, help=help_text)


def setting_flags(cls: type, exclude: Iterable[str] = ()) -> list[tuple[str, str | None, dataclasses.Field, Any]]:
    """(flag name, group or None, field, type) of every leaf setting of `cls` that has a flag:
    `--name`, or `--group_name` inside a nested group; `exclude` lists flag names to leave out."""
    rows, excluded = [], set(exclude)
    hints, groups = typing.get_type_hints(cls), nested_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in groups:
            group_hints = typing.get_type_hints(groups[f.name])
            rows += [(f"{f.name}_{sub.name}", f.name, sub, group_hints[sub.name]) for sub in dataclasses.fields(groups[f.name])
                     if f"{f.name}_{sub.name}" not in excluded]
        elif f.name not in excluded:
            rows.append((f.name, None, f, hints[f.name]))
    return rows


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str, presets: Mapping[str, Any] | None = None,
                     preset_help: str = "", config_help: str = "YAML file of settings with the flag names below as keys",
                     default_preset: str = "paper", exclude: Iterable[str] = (),
                     help_of: Callable[[str | None, dataclasses.Field], str] | None = None,
                     help_suffix: Mapping[str, str] | None = None) -> None:
    """Adds `--preset` (when there are `presets`), `--config YAML` and one flag per setting of `cls`,
    in an argument group named `title`. `help_of(group, field)` gives help text for fields
    without their own; `help_suffix` adds text after a flag's default."""
    group = parser.add_argument_group(title)
    if presets:
        group.add_argument("--preset", choices=tuple(presets), default=default_preset, help=preset_help)
    group.add_argument("--config", metavar="YAML", help=config_help)
    defaults = cls()
    for flag, group_name, f, hint in setting_flags(cls, exclude):
        default = getattr(getattr(defaults, group_name) if group_name else defaults, f.name)
        text = f.metadata["help"] if "help" in f.metadata else help_of(group_name, f)
        add_setting_flag(group, flag, f, hint, f"{text} (default: {_shown(default)}){(help_suffix or {}).get(flag, '')}")


def flag_settings(args: argparse.Namespace, cls: type, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The settings given as flags (those not None), nested like `cls`."""
    values: dict[str, Any] = {}
    for flag, group_name, f, _ in setting_flags(cls, exclude):
        value = getattr(args, flag)
        if value is None:
            continue
        if group_name:
            values.setdefault(group_name, {})[f.name] = value
        else:
            values[f.name] = value
    return values
