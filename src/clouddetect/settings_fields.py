"""Settings declared once, as dataclass fields, and offered from that one declaration as click options, argparse
flags (Locust's), command-line arguments for a child process and ``<PREFIX><NAME>`` environment variables.

A default, a bound or a help text written in one place cannot disagree with a copy of itself elsewhere.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "Path": Path}


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, choices: tuple[str, ...] | None = None, file: bool = False) -> Any:
    """A settings field: its default, what it means, and the values it accepts (checked by click and argparse);
    ``file``: a path that must name a file, not a folder."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open,
                                            "choices": choices, "file": file})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def chosen(cls: type, names: Iterable[str] | None = None) -> list[Field[Any]]:
    """The fields of ``cls`` (all, or the ones named, in the class's order)."""
    wanted = None if names is None else set(names)
    return [f for f in fields(cls) if wanted is None or f.name in wanted]


def click_options(cls: type, names: Iterable[str] | None = None, env_prefix: str | None = None) -> Decorator:
    """One click option per field. With ``env_prefix`` an option left out is None, so the environment variable or
    the built-in default decides later (see ``settings_values``); without it, the option defaults to the field's."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for f in reversed(chosen(cls, names)):
            if env_prefix is None:
                option = click.option(flag(f.name), f.name, type=_click_type(f), default=f.default,
                                      show_default=True, help=f.metadata["help"])
            else:
                described = f"{f.metadata['help']} [env {env_prefix}{f.name.upper()}; default {f.default}]"
                option = click.option(flag(f.name), f.name, type=_click_type(f), help=described)
            command = option(command)
        return command

    return decorate


def _click_type(f: Field[Any]) -> Any:
    meta, kind = f.metadata, _kind(f)
    if meta.get("choices"):
        return click.Choice(meta["choices"])
    if kind is Path:
        return click.Path(path_type=Path, dir_okay=not meta.get("file"))
    if kind in (int, float) and (meta.get("low") is not None or meta.get("high") is not None):
        ranged = click.IntRange if kind is int else click.FloatRange
        bounds: dict[str, Any] = {"min": meta["low"], "max": meta["high"]}
        if kind is float:
            bounds["min_open"] = meta["low_open"]
        return ranged(**bounds)
    return kind


def _kind(f: Field[Any]) -> type:
    """The field's type (an optional one's, for ``str | None``), from its annotation's text."""
    return _TYPES[str(f.type).removesuffix(" | None")]


def add_arguments(parser: argparse.ArgumentParser, cls: type, flag_of: Callable[[str], str],
                  names: Iterable[str] | None = None, **extra: Any) -> None:
    """One argparse flag per field, named by ``flag_of``, with the field's default, type and choices."""
    for f in chosen(cls, names):
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "type": _kind(f)}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if kwargs["type"] is Path:  # Locust sends options to its workers (msgpack) and web UI (JSON) as strings
            kwargs["type"] = str
            kwargs["default"] = str(kwargs["default"])
        parser.add_argument(flag_of(f.name), **kwargs, **extra)


def arguments(settings: Any, flag_of: Callable[[str], str], names: Iterable[str] | None = None) -> list[str]:
    """The settings as the flags ``add_arguments`` declares, for a child process's command line (None: left out)."""
    given = [f for f in chosen(type(settings), names) if getattr(settings, f.name) is not None]
    return [part for f in given for part in (flag_of(f.name), str(getattr(settings, f.name)))]


def settings_values(cls: type, prefix: str, environ: Mapping[str, str] | None,
                    overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A settings dataclass's values from ``<prefix><NAME>`` environment variables, then overrides (None: not given)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = env.get(prefix + f.name.upper())
        if raw is not None:
            values[f.name] = _parse(f.type, raw, prefix + f.name.upper())
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def _parse(type_name: Any, raw: str, variable: str) -> Any:
    try:
        return _TYPES[str(type_name).removesuffix(" | None")](raw)
    except ValueError as exc:
        raise ValueError(f"{variable}={raw!r}: {exc}") from None
