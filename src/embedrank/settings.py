"""The machinery under every config class: a pydantic base, one-line errors, renamed keys and descriptions.

A config class declares each key once, as a pydantic field: its type (`Literal` for a fixed set of values),
bounds, default and description. This module turns pydantic's validation errors into the one line a user can
act on (the key, the value, the fix), accepts keys that were renamed (with a one-line notice), makes local
paths absolute by walking the fields typed as locations, and prints a config with every key's meaning.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError


class Location:
    """Field marker: a local path or URI that is made absolute at start-up (`with_absolute_paths`)."""

    def __init__(self, only_if_exists: bool = False):
        self.only_if_exists = only_if_exists  # model sources: a hub id is no path unless such a folder exists


URI = Annotated[str, Location()]
URIS = Annotated[str | list[str], Location()]  # one location or several


def key(default: Any, description: str, **constraints) -> Any:
    """A config key: its default, what it means (printed by `embedrank config`) and its bounds."""
    return Field(default, description=description, **constraints)


def section(cls: type, description: str) -> Any:
    """A nested section with its defaults."""
    return Field(default_factory=cls, description=description)


_notified: set[str] = set()
_validating: contextvars.ContextVar[bool] = contextvars.ContextVar("embedrank_config_validating", default=False)


def notice(text: str) -> None:
    """One line on stderr, once per process: a renamed key still accepted."""
    if text not in _notified:
        _notified.add(text)
        print(f"embedrank: notice: {text}", file=sys.stderr, flush=True)


class Section(BaseModel):
    """Base of every config class: frozen, strict types, no unknown keys, errors as one ConfigError line.

    `RENAMED` maps an old key to its new name; the old one is accepted with a notice. A class that needs more
    than a rename (several old keys into one) overrides `upgrade`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    RENAMED: ClassVar[dict[str, str]] = {}

    def __init__(self, **data):
        # pydantic calls this for nested sections too: only the outermost call turns errors into one line.
        outermost = not _validating.get()
        token = _validating.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if not outermost:
                raise
            raise ConfigError(one_line(exc, type(self), data, f"{type(self).__name__}.")) from None
        finally:
            _validating.reset(token)

    @classmethod
    def upgrade(cls, data: dict, prefix: str) -> dict:
        """`data` with renamed keys under their new names (a notice says so once). Where both are given, the
        key given last wins: a `--set` with the old name overrides a YAML file that has the new one."""
        out = {}
        for name, value in data.items():
            if name in cls.RENAMED:
                notice(f"config key {prefix}{name} is now {prefix}{cls.RENAMED[name]}; the old name still works")
                out.pop(cls.RENAMED[name], None)
            out[cls.RENAMED.get(name, name)] = value
        return out

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        return cls.upgrade(data, f"{cls.__name__}.") if isinstance(data, dict) else data


def load(cls: type[Section], data: dict) -> Section:
    """Build `cls` from plain data (YAML), every key checked; a mistake is one ConfigError line."""
    if not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {type(data).__name__}")
    data = upgrade_tree(cls, data, "")
    token = _validating.set(True)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, cls, data, "")) from None
    finally:
        _validating.reset(token)


def upgrade_tree(cls: type[Section], data: dict, prefix: str) -> dict:
    """Renamed keys replaced in `data` and every section below it, with notices naming the full key."""
    data = cls.upgrade(data, prefix)
    out = {}
    for name, value in data.items():
        sub = section_class(cls, name)
        out[name] = upgrade_tree(sub, value, f"{prefix}{name}.") if sub and isinstance(value, dict) else value
    return out


def section_class(cls: type[Section], name: str) -> type[Section] | None:
    """The Section class of field `name` of `cls` (also through `X | None`), or None for a plain value."""
    field = cls.model_fields.get(name)
    if field is None:
        return None
    for hint in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(hint, type) and issubclass(hint, Section):
            return hint
    return None


# -- one-line messages ---------------------------------------------------------------------------------------


def one_line(exc: ValidationError, cls: type[Section], data: Any, prefix: str) -> str:
    """The first error of `exc` as one line: the key, the value and what would be accepted."""
    error = exc.errors(include_url=False)[0]
    owner, path, field = cls, [], None
    for part in error["loc"]:  # walk the sections; parts that are no field name are union branches
        if not isinstance(part, str) or owner is None or part not in owner.model_fields:
            if error["type"] == "extra_forbidden":
                path.append(str(part))
            break
        path.append(part)
        field = owner.model_fields[part]
        owner = section_class(owner, part)
    name = prefix + ".".join(path)
    kind, value = error["type"], _value_at(data, path, error.get("input"))
    if kind == "extra_forbidden":
        parent = _class_at(cls, path[:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(path[-1], known, n=1)
        where = prefix + "".join(f"{p}." for p in path[:-1])
        hint = f" (did you mean {where}{close[0]}?)" if close else f"; known keys: {', '.join(known)}"
        return f"unknown config key {name!r}{hint}"
    if kind == "value_error":  # a check of the field or class itself: its message names the fix
        text = str(error["ctx"]["error"])
        named = path and text.split(":", 1)[0].endswith(path[-1])  # the check named its key itself
        return f"{name}: {text}" if path and not named else text
    if kind == "literal_error":
        allowed = typing.get_args(_literal_of(field.annotation)) if field else ()
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}{hint}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(error["ctx"].values()))
        return f"{name} must be {bounds[kind]} {limit}, got {value!r}"
    if kind in ("string_too_short", "too_short"):
        return f"{name} must not be empty, got {value!r}"
    if kind == "model_type":
        return f"{name} must be a mapping of keys, got {value!r}"
    expected = type_name(field.annotation) if field else "another type"
    text = f"{name}: expected {expected}, got {value!r}"
    if isinstance(value, dict) and "str" in expected:
        text += " (YAML read the value as a mapping: quote it, e.g. --set 'key=\"{...}\"')"
    return text


def _class_at(cls, path):
    for part in path:
        cls = section_class(cls, part) if cls else None
    return cls


def _value_at(data, path, fallback):
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return fallback
        data = data[part]
    return data


def _literal_of(hint):
    if typing.get_origin(hint) is typing.Literal:
        return hint
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is typing.Literal:
            return arg
    return hint


def type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(map(repr, typing.get_args(hint)))
    if typing.get_origin(hint) is Annotated:
        return type_name(typing.get_args(hint)[0])
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return " | ".join(type_name(a) for a in args)
    if args:
        return f"{getattr(typing.get_origin(hint), '__name__', str(hint))}[{', '.join(type_name(a) for a in args)}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


# -- what the CLI prints, and local paths --------------------------------------------------------------------


def describe(cfg: Section, indent: str = "") -> str:
    """The config as YAML, every key with its meaning as a comment (`embedrank config`)."""
    lines = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        comment = f"  # {field.description}" if field.description else ""
        if isinstance(value, Section):
            lines.append(f"{indent}{name}:{comment}")
            lines.append(describe(value, indent + "  "))
        else:
            plain = list(value) if isinstance(value, tuple) else value
            text = yaml.safe_dump(plain, default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{indent}{name}: {text}{comment}")
    return "\n".join(lines)


def with_absolute_paths(cfg: Section) -> Section:
    """The config with every local location (fields marked Location) made absolute, so that a job never
    depends on its working directory again after start-up."""
    changes = {}
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, Section):
            fixed = with_absolute_paths(value)
            if fixed is not value:
                changes[name] = fixed
            continue
        marker = next((m for m in field.metadata if isinstance(m, Location)), None)
        if marker is not None and value:
            fixed = _absolute(value, marker.only_if_exists)
            if fixed != value:
                changes[name] = fixed
    return cfg.model_copy(update=changes) if changes else cfg


def _absolute(uri, only_if_exists: bool):
    if isinstance(uri, list):
        return [_absolute(u, only_if_exists) for u in uri]
    if not uri or ("://" in uri and not uri.startswith("file://")) or uri.startswith("builtin:"):
        return uri
    path = os.path.expanduser(uri.removeprefix("file://"))
    if only_if_exists and not os.path.exists(path):
        return uri
    return os.path.abspath(path)


# -- YAML and --set ------------------------------------------------------------------------------------------


def read_yaml(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """The YAML at `path` (optional) with `key=value` overrides applied, as plain data."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    for text in overrides or []:
        apply_override(data, *parse_override(text))
    return data


def parse_override(text: str) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set model.dim=256")
    name, raw = text.split("=", 1)
    if not name.strip():
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return name.strip().split("."), value


def apply_override(data: dict, path: list[str], value) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value
