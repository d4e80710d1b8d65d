"""Secret redaction: keep tokens, keys and passwords out of verification logs.

Owns: ``REDACTED``, the test of secret-looking names (:func:`is_secret_name`) and
:func:`redact`, which replaces secrets by name (at any depth, after secret flags in argument
lists) and by value (secret-named environment variables, credential-shaped strings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "REDACTED",
    "is_secret_name",
    "redact",
]

REDACTED = "[REDACTED]"

# --------------------------------------------------------------------------------------------
# Secrets: redact by name and by value
# --------------------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"token|key|secret|passw(?:or)?d|credential", re.IGNORECASE)
# Words that contain "token"/"key" but name counts or timings, never credentials.
_BENIGN_NAME = re.compile(
    r"tokens|tokeni[sz]\w*|token_source|(?:first|last|next|per|inter)_?token|token_?ids?"
    r"|keyboard|keyword|monkey",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{30,})"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"
)
_URL_USERINFO = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")
_ASSIGNMENT = re.compile(r"(--?[A-Za-z][\w\-]*|\b[A-Za-z_][\w.]*)=([^\s&#;,]+)")
_MIN_SECRET_LEN = 6


def is_secret_name(name: str) -> bool:
    """Say whether a variable or key name looks like it holds a secret.

    Names containing TOKEN, KEY, SECRET, PASSWORD (or PASSWD) or CREDENTIAL, in any case and
    anywhere in the name, are secret; words that only count or time tokens (``max_tokens``,
    ``output_tokens``, ``first_token_s``, ``tokenizer``) are not.

    Parameters
    ----------
    name : str
        A variable name, dictionary key or command-line flag.

    Returns
    -------
    bool
        True when values under this name must never be written.
    """
    return bool(_SECRET_NAME.search(_BENIGN_NAME.sub("", str(name))))


def _secret_env_values(environ: Mapping[str, str]) -> list[str]:
    values = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def _redact_string(text: str, secrets: Sequence[str]) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _SECRET_VALUE.sub(REDACTED, text)
    text = _URL_USERINFO.sub(REDACTED + "@", text)
    return _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}" if is_secret_name(m.group(1)) else m.group(0), text)


def redact(data: Any, *, environ: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """Return a copy of JSON-ready data with every secret replaced by ``REDACTED``.

    A value is a secret when its key is a secret name (:func:`is_secret_name`, at any depth),
    when it follows a secret flag in a list (``["--api-key", "..."]``), when it contains the
    value of a secret-named environment variable, or when it looks like a credential
    (``sk-...``, ``hf_...``, ``ghp_...``, ``AKIA...``, ``Bearer ...``, ``user:pass@`` in a URL,
    ``NAME=value`` with a secret NAME).

    Parameters
    ----------
    data : Any
        JSON-ready data (dicts with string keys, lists, strings, numbers, booleans, None).
    environ : mapping, optional
        Environment whose secret-named values are searched for; ``os.environ`` when omitted.

    Returns
    -------
    tuple
        The redacted copy and the JSON paths that were changed.
    """
    secrets = _secret_env_values(os.environ if environ is None else environ)
    changed: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            new = _redact_string(value, secrets)
            if new != value:
                changed.append(path)
            return new
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                new_key = _redact_string(str(key), secrets)
                sub = f"{path}.{new_key}" if path else new_key
                if new_key != key:
                    changed.append(sub)
                if is_secret_name(str(key)) and item is not None:
                    out[new_key] = REDACTED
                    changed.append(sub)
                else:
                    out[new_key] = walk(item, sub)
            return out
        if isinstance(value, list):
            out_list = []
            for i, item in enumerate(value):
                prev = value[i - 1] if i else None
                if (
                    isinstance(prev, str)
                    and prev.startswith("-")
                    and "=" not in prev
                    and is_secret_name(prev)
                    and isinstance(item, str)
                ):
                    out_list.append(REDACTED)
                    changed.append(f"{path}[{i}]")
                else:
                    out_list.append(walk(item, f"{path}[{i}]"))
            return out_list
        return value

    return walk(data, ""), changed
