"""Command-line flags generated from the config types, so a flag and its field cannot drift.

Two kinds of config become flags:

- a process's pydantic-settings class (``ServerSettings``, ``DeviceSettings``, ``LinkSettings``):
  one ``--field-name`` per field, default ``None`` so the environment and the field's own default
  still apply, help from the field's ``description``;
- a run's dataclass (``TrainSelectorConfig``, ``DemoConfig``, ...): one ``--field-name`` per field
  with the field's default, help from the docstring under the field (or its trailing comment);
  a nested dataclass field ``model: EarlyExitConfig`` gives ``--model.depth`` and so on.

Subcommands whose config lives in a torch module are built lazily (:class:`LazyParser`): only
the subcommand being run (or asked for ``--help``) imports its config, so the serving commands
and ``semlink --help`` work on a torch-free install.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

SEP = "."  # nested dataclass fields: --model.depth, dest "model.depth"


class LazyParser(argparse.ArgumentParser):
    """An argument parser that adds its arguments only when it is used (parsed or asked for
    help): ``populate(parser)`` runs once, then it behaves as a plain parser."""

    def __init__(
        self,
        *args: Any,
        populate: Callable[[argparse.ArgumentParser], None] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self._populate = populate

    def _ensure(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """Populates, then parses as usual."""
        self._ensure()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        """Populates, then formats the full help."""
        self._ensure()
        return super().format_help()


def add_settings(parser: argparse.ArgumentParser, settings: type, skip: Iterable[str] = ()) -> None:
    """One flag per field of a pydantic-settings class (default ``None``: not given)."""
    prefix = settings.model_config.get("env_prefix", "")  # type: ignore[attr-defined]
    for name, field in settings.model_fields.items():  # type: ignore[attr-defined]
        if name in skip:
            continue
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None else default
        help_ = f"{field.description + ' ' if field.description else ''}(default: {shown}; env {prefix}{name.upper()})"
        _add(parser, name, field.annotation, None, help_)


def settings_from(args: argparse.Namespace, settings: type, **extra: Any) -> Any:
    """The settings with every flag that was given (and ``extra``) over environment and defaults."""
    given = {
        k: v
        for k, v in vars(args).items()
        if k in settings.model_fields and v is not None  # type: ignore[attr-defined]
    }
    return settings(**given, **extra)


def add_dataclass(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    prefix: str = "",
) -> None:
    """One flag per field of a dataclass, with the field's default (or ``defaults[name]``)."""
    skip, defaults = set(skip), defaults or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            add_dataclass(parser, typ, prefix=f"{prefix}{f.name}{SEP}")  # type: ignore[arg-type]
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        required = (
            f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in defaults
        )
        doc = docs.get(f.name, "")
        says_default = required or "default" in doc.lower()
        help_ = doc if says_default else f"{doc} (default: {default})".strip()
        _add(parser, prefix + f.name, typ, default, help_, required=required)


def dataclass_from(args: argparse.Namespace, cls: type, prefix: str = "", **extra: Any) -> Any:
    """The dataclass built from the flags :func:`add_dataclass` added (and ``extra``)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            values[f.name] = dataclass_from(args, typ, f"{prefix}{f.name}{SEP}")  # type: ignore[arg-type]
        elif hasattr(args, prefix + f.name):
            value = getattr(args, prefix + f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    values.update(extra)
    return cls(**values)


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the docstring under each field or the comment after it, for the
    class and its dataclass bases (cleanrl style: ``lr: float = 3e-4`` then ``\"\"\"...\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass.__module__ == "builtins":
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments = {
            tok.start[0]: tok.string.lstrip("# ").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT
        }
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for i, node in enumerate(body):
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
            elif node.lineno in comments:
                docs[node.target.id] = comments[node.lineno]
    return docs


def _add(
    parser: argparse.ArgumentParser,
    dest: str,
    annotation: Any,
    default: Any,
    help_: str,
    required: bool = False,
) -> None:
    flag = "--" + dest.replace("_", "-")
    typ = _strip_none(annotation)
    help_ = help_.replace("%", "%%")  # argparse formats help with %
    kw: dict[str, Any] = {"dest": dest, "default": default, "help": help_}
    if typ is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        return
    if required:
        kw["required"] = True
    origin = typing.get_origin(typ)
    if origin is Literal:
        kw["choices"] = list(typing.get_args(typ))
        kw["type"] = type(kw["choices"][0])
    elif isinstance(typ, type) and issubclass(typ, enum.Enum):
        kw["choices"] = [m.value for m in typ]
    elif origin in (tuple, list):
        item = typing.get_args(typ)[0]
        kw["nargs"] = "+"
        kw["type"] = item
        kw["metavar"] = item.__name__.upper()
    elif typ is SecretStr:
        kw["type"] = str
    elif typ in (int, float, str, Path):
        kw["type"] = typ
        kw["metavar"] = {int: "N", float: "X", str: "TEXT", Path: "PATH"}[typ]
    else:
        raise TypeError(f"no command-line form for {dest}: {annotation!r}")
    parser.add_argument(flag, **kw)


def _strip_none(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
