"""Map a frozen config dataclass onto ``--kebab-case`` command-line flags.

Scripts build their parser with :func:`add_config_args` and turn the parsed namespace back into
the dataclass with :func:`config_from_args`, so the defaults live in one place: the library's
dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["add_config_args", "config_from_args", "set_threads", "THREADS_HELP"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


class _NoneValue:
    """What ``--flag none`` parses to for an optional field (argparse's ``None`` means "not given")."""

    def __repr__(self) -> str:
        return "none"


NONE = _NoneValue()


def _optional(parse):
    """``parse``, with ``none`` (any case) meaning the field's ``None``."""

    def parse_optional(text: str):
        return NONE if text.strip().lower() == "none" else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return parse_optional


def _tuple_parser(elem_type):
    def parse(text: str):
        try:
            return tuple(elem_type(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from e

    return parse


def add_config_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--kebab-case`` flag per field of the dataclass ``cls``.

    Defaults are left as ``None`` in argparse so that :func:`config_from_args` only overrides the
    fields the user actually gave. An optional field (``X | None``) also takes ``none``.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        origin = typing.get_origin(typ)
        args = typing.get_args(typ)
        optional = origin in (typing.Union, types.UnionType) and type(None) in args  # Optional[X] or X | None
        if optional:
            typ = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(typ), typing.get_args(typ)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"(default: {default})" + ("; none for None" if optional else "")
        wrap = _optional if optional else (lambda p: p)
        if typ is bool:
            parser.add_argument(_flag(prefix + f.name), type=wrap(_parse_bool), default=None, help=help_text)
        elif origin is tuple:
            parser.add_argument(_flag(prefix + f.name), type=wrap(_tuple_parser(args[0])), default=None,
                                help=help_text + " comma-separated")
        elif typ in (int, float, str):
            parser.add_argument(_flag(prefix + f.name), type=wrap(typ), default=None, help=help_text)
        # Other field types are not exposed on the command line.


def config_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, prefix: str = "") -> T:
    """Build ``cls`` from ``base`` (or its defaults) with the flags that were given on the command line."""
    base = cls() if base is None else base
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, (prefix + f.name), None)
        if value is not None:
            changes[f.name] = None if value is NONE else value
    return dataclasses.replace(base, **changes)


#: help text of the ``--threads`` flag of the inference scripts.
THREADS_HELP = ("torch CPU threads (default 1: the backward pass is many small tensor ops, and on this project's "
                "2-core machine two OpenMP threads made one pass 0.23 s -> 15.6 s whenever another process "
                "was running)")


def set_threads(n: int) -> None:
    """Set torch's CPU threads, with a clear error for a bad count."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--threads: expected a positive number of threads, got {n!r}")
    import torch

    torch.set_num_threads(n)
