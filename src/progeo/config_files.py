"""Config files and flags of the training stages: the one mapping of flat names (``--flat-name``
flags, flat YAML/JSON keys) onto the sectioned dataclasses of :mod:`progeo.config`, reading,
checking and merging config files, and writing ``config.json``.

A file may be flat (``M``, ``eval_batch_size``) or sectioned (``groups: {M: 20}``); flags override
the file, the file the defaults; an unknown or misplaced key is an error naming the key, the file
and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from progeo.errors import ConfigError, reading

C = TypeVar("C")


@functools.cache
def flat_fields(cls) -> dict[str, tuple[str | None, dataclasses.Field, Any]]:
    """The one mapping of flat names (flags ``--name``, flat config keys) onto the fields of ``cls``:
    ``name -> (section or None, field, type)``; a section's field keeps its own name unless its
    metadata gives a ``flat`` one (``eval.batch_size`` is ``eval_batch_size``)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = (None, f, hints[f.name])
            continue
        sub = typing.get_type_hints(hints[f.name])
        for g in dataclasses.fields(hints[f.name]):
            out[g.metadata.get("flat") or g.name] = (f.name, g, sub[g.name])
    return out


def config_fields(cls) -> dict[str, Any]:
    """``flat name -> type`` of a config dataclass (types resolved; see :func:`flat_fields`)."""
    return {name: tp for name, (_, _, tp) in flat_fields(cls).items()}


def field_help(cls, name: str) -> str:
    """Help text of the setting with flat name ``name`` of the config class ``cls``, ending with its default."""
    f = flat_fields(cls)[name][1]
    text = f.metadata["help"]  # every field is made with _opt(default, help)
    paper = ", the paper's value" if f.metadata.get("paper") else ""
    return f"{text} (default: {show_value(f.default)}{paper})"


def show_value(value: Any) -> str:
    """A value as written on the command line: ``none``, ``true``, ``1 5 10``."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return " ".join(show_value(v) for v in value)
    return repr(value) if isinstance(value, str) and " " in value else str(value)


def read_config_file(path: str | Path) -> dict:
    """The mapping stored in a YAML (``.yaml``/``.yml``) or JSON file."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror or exc}); check the --config path") from exc
    with reading(path, "config file", "correct it or give another config file", ConfigError):
        text = raw.decode("utf-8-sig")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got a {type(data).__name__}")
    return data


def coerce_value(value: Any, tp: Any, name: str, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        error = None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, name, where)
            except ConfigError as exc:
                error = error or exc
        raise error
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} in {where} must be a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], name, where) for v in value)
        if origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"{name} in {where} needs {len(args)} values, got {list(value)!r}")
            return tuple(coerce_value(v, a, name, where) for v, a in zip(value, args))
        return [coerce_value(v, args[0] if args else Any, name, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.strip().lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name} in {where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                                           or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise ConfigError(f"{name} in {where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} in {where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} in {where} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"{name} in {where} must be a string, got {value!r}")
        return str(value)
    return value


def flatten_config(cls, data: Mapping[str, Any], where: str = "the configuration") -> dict[str, Any]:
    """``flat name -> value`` of ``data``, which holds flat keys (``lr``, ``M``, ``eval_batch_size``),
    sections (``groups: {M: 20}``), or both; an unknown or misplaced key is an error naming it."""
    fields = flat_fields(cls)
    dotted = {f"{sec}.{f.name}": name for name, (sec, f, _) in fields.items() if sec}
    sections = {sec for sec, _, _ in fields.values() if sec}
    out = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in sections and isinstance(value, Mapping):
            items = [(f"{key}.{str(k).replace('-', '_')}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for sub, v in items:
            name = dotted.get(sub, sub if "." not in sub else None)
            if name in fields:
                out[name] = v
                continue
            import difflib

            placed = {d.rsplit(".", 1)[1]: f"{d} (or {n})" for d, n in dotted.items()} | {n: n for n in fields}
            if sub.rsplit(".", 1)[-1] in placed:
                raise ConfigError(f"option {sub!r} in {where} is misplaced; write it as {placed[sub.rsplit('.')[-1]]}")
            close = difflib.get_close_matches(sub, [*fields, *dotted], n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown option {sub!r} in {where}; {hint}")
    return out


def config_from_dict(cls: type[C], data: Mapping[str, Any], where: str = "the configuration",
                     base: C | None = None) -> C:
    """A ``cls`` with the values of ``data`` (see :func:`flatten_config`) over ``base`` (or the defaults)."""
    base, top, sections = base if base is not None else cls(), {}, {}
    for name, value in flatten_config(cls, data, where).items():
        sec, f, tp = flat_fields(cls)[name]
        (sections.setdefault(sec, {}) if sec else top)[f.name] = coerce_value(value, tp, name, where)
    cfg = dataclasses.replace(base, **top, **{s: dataclasses.replace(getattr(base, s), **kw) for s, kw in sections.items()})
    cfg.check()
    return cfg


def flat_config(cfg) -> dict:
    """``flat name -> value`` of a config (the flags' and old config files' spelling)."""
    return {name: getattr(getattr(cfg, sec) if sec else cfg, f.name)
            for name, (sec, f, _) in flat_fields(type(cfg)).items()}


def load_config(cls: type[C], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> C:
    """Defaults, then the file ``path`` (YAML/JSON), then ``overrides`` (e.g. the command-line flags)."""
    cfg = cls()
    if path is not None:
        cfg = config_from_dict(cls, read_config_file(path), where=f"config file {path}")
    if overrides:
        cfg = config_from_dict(cls, overrides, where="the command line", base=cfg)
    else:
        cfg.check()
    return cfg


def config_to_dict(cfg) -> dict:
    """JSON-ready dict of a config (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg, path: str | Path) -> Path:
    """Write ``cfg`` as JSON (atomically); :func:`load_config` reads it back."""
    from progeo.io import write_json_atomic

    write_json_atomic(path, config_to_dict(cfg))
    return Path(path)


__all__ = ["load_config", "config_from_dict", "flat_fields", "flat_config", "read_config_file", "save_config",
           "config_to_dict", "config_fields", "coerce_value", "field_help"]
