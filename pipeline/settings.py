"""Helpers for the frozen config dataclasses of the pipeline stages: fields that carry their help
text (with units), one command-line flag per field, YAML mappings."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Mapping

import yaml


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field whose `help` (units included) becomes its flag's help text."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def add_setting_flag(group, flag: str, field: dataclasses.Field, hint: Any, help_text: str) -> None:
    """Adds `--flag` for a setting of type `hint`; default None means "keep the preset/YAML value".

    bool -> --flag/--no-flag; tuple[T, ...] -> zero or more T; tuple[T, T] -> exactly two T.
    """
    if hint is bool:
        group.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        nargs = "*" if len(items) == 2 and items[1] is Ellipsis else len(items)
        group.add_argument(f"--{flag}", type=items[0], nargs=nargs, default=None, help=help_text)
    else:
        group.add_argument(f"--{flag}", type=hint, default=None, choices=field.metadata.get("choices"), help=help_text)


def read_yaml_mapping(path: str) -> Mapping[str, Any]:
    """The mapping of settings in a YAML file (ValueError naming the file if it holds none)."""
    with open(path, encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle) or {}
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} must hold a YAML mapping of settings")
    return loaded
