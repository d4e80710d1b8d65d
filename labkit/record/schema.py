"""The verification log's format: version constants, JSON conversion, canonical hash, schema.

Owns: ``SCHEMA_VERSION``, ``HASH_ALGORITHM`` and ``MAX_LOG_BYTES``; the conversion of summaries,
records, numpy values and dataclasses to plain JSON data; the canonical JSON form and the
integrity hash over it; reading the JSON Schema ``verification/schema/verification-log.v1.schema.json``
and validating a log against it (with a fast path for the long sample columns).
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


@functools.lru_cache(maxsize=1)
def _column_item_rules() -> dict[str, tuple[tuple[str, ...], float | None]]:
    """Item rules of the sample columns, read from the schema (only type and minimum).

    Thousands of per-request values make jsonschema slow (a second per log), so
    :func:`validate_log` checks the columns' items with these rules and leaves everything else
    to jsonschema. A column whose item schema uses other keywords is left to jsonschema.
    """
    schema = load_schema()
    columns = schema["properties"]["samples"]["properties"]["requests"]["properties"]["columns"]["properties"]
    rules = {}
    for name, spec in columns.items():
        if "$ref" in spec:
            spec = schema["$defs"][spec["$ref"].rsplit("/", 1)[-1]]
        items = spec.get("items", {})
        if set(spec) - {"type", "items", "description"} or set(items) - {"type", "minimum"}:
            continue
        kinds = items.get("type", [])
        rules[name] = (tuple([kinds] if isinstance(kinds, str) else kinds), items.get("minimum"))
    return rules


def _split_columns(data: Any) -> tuple[Any, dict[str, list[Any]]]:
    """Return data with long sample columns cut to one item, and the cut-off columns."""
    samples = data.get("samples") if isinstance(data, dict) else None
    requests = samples.get("requests") if isinstance(samples, dict) else None
    columns = requests.get("columns") if isinstance(requests, dict) else None
    if not isinstance(columns, dict):
        return data, {}
    rules = _column_item_rules()
    long = {k: v for k, v in columns.items() if k in rules and isinstance(v, list) and len(v) > 1}
    if not long:
        return data, {}
    cut = {k: v[:1] if k in long else v for k, v in columns.items()}
    return {**data, "samples": {**samples, "requests": {**requests, "columns": cut}}}, long


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
    light, long = _split_columns(data)
    problems = []
    for error in validator.iter_errors(light):
        where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        problems.append(f"{where}: {error.message[:300]}")
        if len(problems) >= max_errors:
            return problems
    rules = _column_item_rules()
    for name, values in long.items():
        kinds, minimum = rules[name]
        checks = [_ITEM_TYPES[k] for k in kinds if k in _ITEM_TYPES]
        for i, value in enumerate(values[1:], start=1):
            if not any(check(value) for check in checks):
                problems.append(f"$.samples.requests.columns.{name}[{i}]: {value!r:.60} is not of type {list(kinds)}")
            elif minimum is not None and value is not None and not isinstance(value, str) and value < minimum:
                problems.append(
                    f"$.samples.requests.columns.{name}[{i}]: {value!r} is less than the minimum of {minimum}"
                )
            else:
                continue
            if len(problems) >= max_errors:
                return problems
    return problems
