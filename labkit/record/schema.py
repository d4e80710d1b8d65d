"""The verification log's format: version constants, JSON conversion, canonical hash, schema.

Owns: ``SCHEMA_VERSION``, ``HASH_ALGORITHM`` and ``MAX_LOG_BYTES``; the conversion of summaries,
records, numpy values and dataclasses to plain JSON data; the canonical JSON form and the
integrity hash over it; reading the JSON Schema ``verification/schema/verification-log.v1.schema.json``
and validating a log against it (long arrays and maps of simple items, such as the sample
columns and series, are checked by a fast loop; jsonschema sees the rest).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labkit.errors import RecordError

__all__ = [
    "HASH_ALGORITHM",
    "MAX_LOG_BYTES",
    "SCHEMA_VERSION",
    "canonical_json",
    "compute_log_hash",
    "load_schema",
    "validate_log",
]

SCHEMA_VERSION = 1
HASH_ALGORITHM = "sha256-canonical-json-v1"
MAX_LOG_BYTES = 20_000_000  # the rubric's default limit: a log larger than this is not graded
_MAX_DEPTH = 48
_SCHEMA_FILE = f"verification-log.v{SCHEMA_VERSION}.schema.json"


# --------------------------------------------------------------------------------------------
# JSON conversion and the canonical hash
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any, path: str = "", depth: int = 0) -> Any:
    """Convert summaries, records, numpy values and dataclasses to plain JSON data."""
    if depth > _MAX_DEPTH:
        msg = f"Value at '{path}' is nested deeper than {_MAX_DEPTH} levels. Pass flatter outputs."
        raise RecordError(msg)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN / Infinity
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(items)]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if callable(getattr(value, "to_dict", None)):
        return _jsonable(value.to_dict(), path, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), path, depth + 1)
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars
        return _jsonable(value.tolist(), path, depth + 1)
    msg = (
        f"Cannot store a {type(value).__name__} at '{path or '<root>'}' in a verification log. "
        "Allowed: dict, list, str, int, float, bool, None, numpy values, dataclasses and objects "
        "with to_dict(). Convert it (e.g. str(value) or value.to_dict()) before passing it."
    )
    raise RecordError(msg)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def canonical_json(data: Any) -> bytes:
    """Return the canonical JSON bytes of data: sorted keys, no whitespace, ASCII only.

    Parameters
    ----------
    data : Any
        JSON-ready data.

    Returns
    -------
    bytes
        UTF-8 (pure ASCII) bytes.

    Raises
    ------
    ValueError
        If data holds NaN or infinity, or a value JSON cannot represent.
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def compute_log_hash(data: Mapping[str, Any]) -> str:
    """Return the sha256 of a log's canonical form with its ``integrity`` field removed.

    Parameters
    ----------
    data : mapping
        A verification log.

    Returns
    -------
    str
        Hex digest.
    """
    body = {k: v for k, v in data.items() if k != "integrity"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


def _checkout_root() -> Path:
    return Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """Read the verification log's JSON Schema from ``verification/schema/``.

    Returns
    -------
    dict
        The schema.

    Raises
    ------
    RecordError
        If the schema file is missing (labkit used outside its repository checkout).
    """
    path = _checkout_root() / "verification" / "schema" / _SCHEMA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        msg = (
            f"Cannot read the verification schema '{path}': {err}. Run labkit from its repository "
            "checkout (pip install -e .) so verification/schema/ is next to the package."
        )
        raise RecordError(msg, path=str(path)) from None


@functools.lru_cache(maxsize=1)
def _validator(cls: Any) -> Any:
    return cls(load_schema())


_ITEM_TYPES = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


_LONG = 64  # arrays and maps longer than this are checked item by item here, not by jsonschema
_MAX_OBJECTS = 256  # objects of one array validated by jsonschema; a log has a few nodes, GPUs, answers


def _resolve(spec: Any) -> Any:
    if isinstance(spec, dict) and "$ref" in spec:
        return load_schema()["$defs"].get(str(spec["$ref"]).rsplit("/", 1)[-1], {})
    return spec


def _simple_rule(spec: Any) -> tuple[tuple[str, ...], float | None] | None:
    """(types, minimum) of an item schema that uses only ``type`` and ``minimum``; else None."""
    spec = _resolve(spec)
    if not isinstance(spec, dict) or not spec or set(spec) - {"type", "minimum", "description"}:
        return None
    kinds = spec.get("type", [])
    kinds = tuple([kinds] if isinstance(kinds, str) else kinds)
    return (kinds, spec.get("minimum")) if kinds and all(k in _ITEM_TYPES for k in kinds) else None


def _lighten(spec: Any, value: Any, path: str, deferred: list, notes: list[str]) -> Any:
    """Return value with its long homogeneous arrays and maps cut for jsonschema.

    The cut-off items of simple type go to ``deferred`` (checked by :func:`_check_deferred`, a
    Python loop, thousands of times faster than jsonschema on per-request columns and series);
    arrays of objects longer than ``_MAX_OBJECTS`` are validated on their first items only and
    the rest is named in ``notes``.
    """
    spec = _resolve(spec)
    if not isinstance(spec, dict):
        return value
    if isinstance(value, list):
        items = spec.get("items", {})
        rule = _simple_rule(items)
        if rule is not None and len(value) > _LONG:
            deferred.append((path, value, 1, rule))
            return value[:1]
        if len(value) > _MAX_OBJECTS:
            notes.append(
                f"{path}: {len(value)} items, more than any run of the course has; "
                f"only the first {_MAX_OBJECTS} were validated"
            )
            value = value[:_MAX_OBJECTS]
        if isinstance(items, dict) and items:
            return [_lighten(items, v, f"{path}[{i}]", deferred, notes) for i, v in enumerate(value)]
        return value
    if isinstance(value, dict):
        properties = spec.get("properties", {})
        extra = spec.get("additionalProperties")
        rule = _simple_rule(extra) if isinstance(extra, dict) else None
        out = {}
        required = set(spec.get("required", []))
        others = {k: v for k, v in value.items() if k not in properties}
        if rule is not None and len(others) > _LONG:
            deferred.append((path, {k: v for k, v in others.items() if k not in required}, None, rule))
            others = {k: v for k, v in others.items() if k in required}
        for key, item in value.items():
            if key in properties:
                out[key] = _lighten(properties[key], item, f"{path}.{key}", deferred, notes)
            elif key in others:
                out[key] = _lighten(extra, item, f"{path}.{key}", deferred, notes) if isinstance(extra, dict) else item
        return out
    return value


def _check_deferred(deferred: list, max_errors: int) -> list[str]:
    problems: list[str] = []
    for path, values, skip, (kinds, minimum) in deferred:
        checks = [_ITEM_TYPES[k] for k in kinds]
        pairs = enumerate(values[skip:], start=skip) if isinstance(values, list) else values.items()
        for where, value in pairs:
            at = f"{path}[{where}]" if isinstance(values, list) else f"{path}.{where}"
            if not any(check(value) for check in checks):
                problems.append(f"{at}: {value!r:.60} is not of type {list(kinds)}")
            elif minimum is not None and value is not None and not isinstance(value, (str, bool)) and value < minimum:
                problems.append(f"{at}: {value!r} is less than the minimum of {minimum}")
            else:
                continue
            if len(problems) >= max_errors:
                return problems
    return problems


def validate_log(data: Any, *, max_errors: int = 20) -> list[str]:
    """Validate a log against the schema and return the problems found.

    Parameters
    ----------
    data : Any
        A parsed log.
    max_errors : int, optional
        Stop after this many problems.

    Returns
    -------
    list of str
        ``"<json path>: <message>"`` per problem; empty when the log is valid.

    Raises
    ------
    MissingDependencyError
        If jsonschema is not installed.
    """
    try:
        import jsonschema  # lazy: only validation needs it
    except ImportError:
        from labkit.errors import MissingDependencyError

        msg = "Validating verification logs needs jsonschema. Run pip install jsonschema."
        raise MissingDependencyError(msg) from None
    validator = _validator(jsonschema.Draft202012Validator)
    deferred: list = []
    notes: list[str] = []
    light = _lighten(load_schema(), data, "$", deferred, notes)
    problems = []
    for error in validator.iter_errors(light):
        where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        problems.append(f"{where}: {error.message[:300]}")
        if len(problems) >= max_errors:
            return problems
    problems += _check_deferred(deferred, max_errors - len(problems))
    return (problems + notes)[:max_errors]
