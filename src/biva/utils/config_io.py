"""Generic (de)serialization of dataclass configs: dicts, JSON/YAML files, ``a.b=value`` overrides.

Nothing here knows about specific config classes; types come from the dataclass annotations.
Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``None``, ``Any``, ``pathlib.Path``,
``Enum`` subclasses, ``Literal[...]``, unions (``Optional[X]``, ``X | Y``), ``tuple[X, ...]``,
fixed ``tuple[X, Y]``, ``list[X]``, ``dict[K, V]`` and nested dataclasses.

A dataclass that stands for a union of subclasses defines a classmethod
``config_class(data, path) -> (subclass, data)`` naming the one a mapping describes.

Validation is strict so that typos fail loudly: ``bool`` is not accepted for ``int``, ``3.0`` is
not accepted for ``int`` (``3`` is accepted for ``float``), and unknown keys are errors.

YAML is read with 1.2-style scalars: ``1e-3`` is a float (PyYAML's YAML 1.1 default makes it a
string), only ``true``/``false`` are booleans (not ``yes``/``no``/``on``/``off``), ``010`` stays a
string rather than becoming octal 8, and dates stay strings. Duplicate keys are errors.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import json
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from biva.utils.atomic import atomic_write_json, to_plain

StrPath = str | os.PathLike[str]
T = TypeVar("T")

__all__ = [
    "ConfigError",
    "apply_overrides",
    "from_dict",
    "load_config",
    "load_config_file",
    "parse_override_value",
    "save_config",
    "to_dict",
]


class ConfigError(ValueError):
    """An invalid configuration; the message names the field path, the expected type and value.

    ``path`` holds the dotted field path the error is about ("" for the root, None if unknown).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def _err(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path or '<root>'}: {message}", path=path)


_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = 8
_repr.maxdict = 8


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    return f"{_repr.repr(value)} ({type(value).__name__})"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# ----------------------------------------------------------------------------- to_dict


def to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a dataclass config (or a mapping) into plain JSON-serializable data.

    Tuples become lists, enums their values, paths strings; nested dataclasses become dicts.
    """
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)) and not isinstance(
        cfg, Mapping
    ):
        raise TypeError(f"to_dict expects a dataclass instance or a mapping, got {type(cfg)!r}")
    return to_plain(cfg, "", encode_nonfinite=False, arrays=False)


# ----------------------------------------------------------------------------- from_dict


def _type_name(tp: Any, *, top: bool = True) -> str:
    if tp is type(None) or tp is None:
        return "None"
    if tp is Any:
        return "any value"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        options = ", ".join(repr(a) for a in args)
        return f"one of {options}" if top else f"Literal[{options}]"
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(a, top=False) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if not args:
            return name
        parts = ["..." if a is Ellipsis else _type_name(a, top=False) for a in args]
        return f"{name}[{', '.join(parts)}]"
    if dataclasses.is_dataclass(tp):
        return f"a mapping for {tp.__name__}" if top else tp.__name__
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def _mismatch(path: str, tp: Any, value: Any) -> ConfigError:
    return _err(path, f"expected {_type_name(tp)}, found {_describe(value)}")


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        # Resolves string annotations from `from __future__ import annotations` modules.
        return typing.get_type_hints(cls)
    except Exception as e:  # NameError etc. for unresolvable forward references
        raise TypeError(f"cannot resolve the type annotations of {cls.__qualname__}: {e}") from e


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating values against the annotations.

    Fills defaults, rejects unknown keys, then calls ``validate()`` if defined (ConfigError).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    return _build_dataclass(cls, data, path)


def _build_dataclass(cls: type[T], data: Any, path: str) -> T:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise _mismatch(path, cls, data)
    choose = getattr(cls, "config_class", None)
    if callable(choose):
        # A base class that stands for a union of subclasses (e.g. one per model family)
        # names the one ``data`` describes, and the keys that class reads.
        cls, data = choose(data, path)
    hints = _type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise _unknown_keys(cls, path, unknown, names)

    kwargs: dict[str, Any] = {}
    for f in fields:
        field_path = _join(path, f.name)
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], field_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _err(field_path,
                       f"missing required field (expected {_type_name(hints[f.name])})")
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # from a __post_init__
        raise _err(path, f"invalid {cls.__name__}: {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        # Passed through untouched: validate() writes its own field paths into its messages.
        validate()
    return obj


def _unknown_keys(cls: type, path: str, unknown: list[Any], names: list[str]) -> ConfigError:
    key = unknown[0]
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    also = ""
    if len(unknown) > 1:
        also = "; also unknown: " + ", ".join(repr(k) for k in unknown[1:])
    valid = ", ".join(names) if names else "(none)"
    return _err(_join(path, str(key)),
                f"unknown field {key!r} for {cls.__name__}{hint}{also}; valid fields: {valid}")


_EXACT = (bool, int, float, str, type(None))


def _convert(value: Any, tp: Any, path: str) -> Any:
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise _mismatch(path, tp, value)
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_union(value, tp, path)
    if origin is Literal:
        for option in get_args(tp):
            # Compare types too: True == 1 must not satisfy Literal[1].
            if type(value) is type(option) and value == option:
                return option
        raise _mismatch(path, tp, value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise _mismatch(path, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                # .nan / .inf parse as floats but no field means anything by them.
                raise _err(path, f"expected a finite number, found {value!r}")
            return float(value)
        raise _mismatch(path, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(path, tp, value)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise _mismatch(path, tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _convert_enum(value, tp, path)
    container = origin if origin is not None else tp
    if container in (list, tuple, Sequence):
        return _convert_sequence(value, tp, container, path)
    if container in (dict, Mapping):
        return _convert_mapping(value, tp, path)
    raise TypeError(f"{path or '<root>'}: unsupported type annotation {tp!r}")


def _convert_union(value: Any, tp: Any, path: str) -> Any:
    arms = get_args(tp)
    # An exact primitive match wins so that `float | int` keeps 3 an int and `int | bool` keeps
    # True a bool, regardless of the order the arms are written in.
    if type(value) in _EXACT and type(value) in arms:
        return value
    errors: list[ConfigError] = []
    for arm in arms:
        try:
            return _convert(value, arm, path)
        except ConfigError as e:
            errors.append(e)
    # If an arm matched the shape but failed deeper (e.g. list[int] with one bad element), its
    # error is more useful than a generic "expected A | B".
    deeper = [e for e in errors if e.path is not None and len(e.path) > len(path)]
    if deeper:
        raise max(deeper, key=lambda e: len(e.path or ""))
    raise _mismatch(path, tp, value)


def _convert_enum(value: Any, tp: type[enum.Enum], path: str) -> enum.Enum:
    if isinstance(value, tp):
        return value
    for member in tp:
        if type(member.value) is type(value) and member.value == value:
            return member
    if isinstance(value, str) and value in tp.__members__:
        return tp[value]
    options = ", ".join(repr(m.value) for m in tp)
    raise _err(path, f"expected one of {options} ({tp.__name__}), found {_describe(value)}")


def _convert_sequence(value: Any, tp: Any, container: Any, path: str) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _mismatch(path, tp, value)
    args = get_args(tp)
    if container is list:
        elem = args[0] if args else Any
        return [_convert(v, elem, f"{path}[{i}]") for i, v in enumerate(value)]
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        elem = args[0] if args else Any
        return tuple(_convert(v, elem, f"{path}[{i}]") for i, v in enumerate(value))
    if args == ((),):  # tuple[()]
        args = ()
    if len(value) != len(args):
        raise _err(path, f"expected {_type_name(tp)} with {len(args)} items, "
                         f"found {_describe(value)} with {len(value)}")
    pairs = enumerate(zip(value, args, strict=True))
    return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in pairs)


def _convert_mapping(value: Any, tp: Any, path: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _mismatch(path, tp, value)
    args = get_args(tp)
    key_tp, value_tp = args if len(args) == 2 else (Any, Any)
    out = {}
    for k, v in value.items():
        key = _convert(k, key_tp, f"{path}[key {k!r}]")
        out[key] = _convert(v, value_tp, _join(path, str(k)))
    return out


# ----------------------------------------------------------------------------- files


def _build_yaml_loader() -> type[yaml.SafeLoader]:
    bool_tag = "tag:yaml.org,2002:bool"
    int_tag = "tag:yaml.org,2002:int"
    float_tag = "tag:yaml.org,2002:float"
    timestamp_tag = "tag:yaml.org,2002:timestamp"
    replaced = {bool_tag, int_tag, float_tag, timestamp_tag}

    class ConfigLoader(yaml.SafeLoader):
        """SafeLoader with YAML 1.2-style scalars that rejects duplicate mapping keys."""

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` followed by explicit keys is a legitimate override
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key; the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    # A fresh dict (not an in-place edit) so yaml.SafeLoader itself is left unchanged.
    ConfigLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    ConfigLoader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    # No leading zeros: SafeConstructor would read "010" as octal.
    ConfigLoader.add_implicit_resolver(
        int_tag, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
    ConfigLoader.add_implicit_resolver(
        float_tag,
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return ConfigLoader


_ConfigLoader = _build_yaml_loader()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


#: Bounds of what a config may hold: a config describes a run in a few kilobytes, and each
#: value is copied into config.json and every checkpoint's meta.json.
MAX_CONFIG_BYTES = 1 << 20
MAX_STRING_CHARS = 4096
MAX_NESTING = 16
MAX_LIST_ITEMS = 10_000


def check_config_bounds(data: Any, where: str) -> None:
    """Refuse strings over :data:`MAX_STRING_CHARS`, nesting over :data:`MAX_NESTING` and
    lists over :data:`MAX_LIST_ITEMS` anywhere in ``data``, naming ``where`` and the key."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:   # iterative: a deep structure cannot exhaust the interpreter's stack
        value, key, depth = stack.pop()
        at = f"{where}: {key or 'top level'}"
        if depth > MAX_NESTING:
            raise ConfigError(f"{at}: nested deeper than {MAX_NESTING} levels")
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise ConfigError(f"{at}: a string of {len(value):,} characters; at most "
                              f"{MAX_STRING_CHARS:,} are accepted")
        if isinstance(value, Mapping):
            stack.extend((v, _join(key, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST_ITEMS:
                raise ConfigError(f"{at}: a list of {len(value):,} items; at most "
                                  f"{MAX_LIST_ITEMS:,} are accepted")
            stack.extend((v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value))


def load_config_file(path: StrPath) -> dict[str, Any]:
    """Read a ``.json``, ``.yaml`` or ``.yml`` file holding a mapping (an empty YAML file is {}).

    Raises :class:`ConfigError` naming the file on a missing file, a parse error, or content
    beyond the bounds (:data:`MAX_CONFIG_BYTES`, :func:`check_config_bounds`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{path}: unsupported config file type {path.suffix!r} "
                          "(expected .json, .yaml or .yml)")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: a config file of {size:,} bytes; at most "
                              f"{MAX_CONFIG_BYTES:,} are accepted")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {e}") from e
    try:
        if suffix == ".json":
            try:
                data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
            except ValueError as e:
                raise ConfigError(f"{path}: invalid JSON: {e}") from e
        else:
            try:
                data = yaml.load(text, Loader=_ConfigLoader)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: invalid YAML: {e}") from e
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to parse (at most {MAX_NESTING} levels "
                          "are accepted)") from None
    if data is None and suffix != ".json":
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, "
                          f"found {type(data).__name__}")
    check_config_bounds(data, str(path))
    return data


def parse_override_value(text: str) -> Any:
    """Parse an override value as a YAML scalar or flow collection (``3``, ``1e-3``, ``[1, 2]``)."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value {text!r}: {e}") from e


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``"a.b.c=VALUE"`` applied (VALUE parsed as YAML).

    Intermediate mappings are created as needed. An empty VALUE is YAML null (None).
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'KEY=VALUE' strings, not a single string")
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"invalid override {item!r}: expected KEY=VALUE")
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p or p != p.strip() for p in parts):
            raise ConfigError(f"invalid override {item!r}: expected KEY=VALUE with KEY like a.b.c")
        try:
            value = parse_override_value(raw)
        except (ConfigError, RecursionError) as e:
            shown = repr(item) if len(item) <= 200 else f"{key}=..."
            raise ConfigError(f"invalid override {shown}: {e or 'nested too deeply'}"
                              ) from None
        check_config_bounds(value, f"override {key}")
        node: dict[str, Any] = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"invalid override {item!r}: {prefix} is "
                                  f"{_describe(child)}, not a mapping")
            node = child
        node[parts[-1]] = value
    return result


def load_config(cls: type[T], path: StrPath, overrides: Sequence[str] = ()) -> T:
    """Load a config file, apply ``overrides`` and build ``cls``; errors name the file."""
    data = apply_overrides(load_config_file(path), overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}", path=e.path) from e


def save_config(cfg: Any, path: StrPath) -> None:
    """Atomically write a dataclass config (or mapping) as JSON with sorted keys and indent 2."""
    data = to_dict(cfg)
    try:
        atomic_write_json(path, data, indent=2, sort_keys=True)
    except ValueError as e:  # NaN/inf, which strict JSON cannot hold
        raise ConfigError(f"{path}: cannot save config as JSON: {e}") from e
