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
    "redact_string",
    "redact_text",
    "secret_env_values",
]

REDACTED = "[REDACTED]"

# --------------------------------------------------------------------------------------------
# Secrets: redact by name and by value
# --------------------------------------------------------------------------------------------

# A name is split into words (snake, kebab, dotted and camelCase): HF_TOKEN -> hf token,
# accessToken -> access token, num_key_value_heads -> num key value heads.
_SECRET_WORDS = frozenset(
    {
        "token", "secret", "secrets", "password", "passwd", "passphrase", "passcode", "pass", "pw", "pat",
        "credential", "credentials", "creds", "auth", "authorization", "bearer", "cookie", "apikey", "key", "keys",
    }
)  # fmt: skip
_SECRET_ENDINGS = ("token", "secret", "password", "passwd", "passphrase", "apikey", "auth", "key", "pass")
# Words that end like a secret word but are not one.
_BENIGN_WORDS = frozenset(
    {"monkey", "turkey", "donkey", "hockey", "jockey", "whiskey", "bypass", "compass", "overpass", "underpass",
     "surpass", "trespass", "encompass", "author"}
)  # fmt: skip
# (word, next word) pairs that count or time tokens or name model shapes, never credentials.
_BENIGN_PAIRS = frozenset(
    {("token", "s"), ("token", "id"), ("token", "ids"), ("token", "source"), ("token", "count"),
     ("key", "value"), ("key", "values"), ("keys", "values")}
)  # fmt: skip
_BENIGN_BEFORE = frozenset({"first", "last", "next", "per", "inter", "sort", "primary", "partition", "cache", "dict"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(?:sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{12,}"
    r"|hf_(?=[A-Za-z0-9]*[A-Z0-9])[A-Za-z0-9]{10,}"
    r"|gh[pousr]_[A-Za-z0-9]{6,}|github_pat_[A-Za-z0-9_]{10,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{30,}|glpat-[A-Za-z0-9_\-]{10,})"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|(?i:token)\s+(?=[A-Za-z0-9._~+/=\-]*[0-9])[A-Za-z0-9._~+/=\-]{16,}"
)
_BASIC = re.compile(r"(?i:basic)\s+([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|x-auth-token|private-token|(?:set-)?cookie)(\s*[:=]\s*)"
    r"[^\r\n\"']+"
)
_URL_USERINFO = re.compile(r"(?<=://)[^/\s@?#]+@")
_ASSIGNMENT = re.compile(r"(--?[A-Za-z][\w\-]*|\b[A-Za-z_][\w.]*)=([^\s&#;,]+)")
_COLON_ASSIGNMENT = re.compile(r"\b([A-Za-z_][\w.\-]*)([\"']?\s*:\s*[\"']?)([^\s\"',;}]+)")
_MIN_SECRET_LEN = 6


def _words(name: str) -> list[str]:
    return [w for w in _WORD_SPLIT.split(_CAMEL.sub("_", name).lower()) if w]


def is_secret_name(name: str) -> bool:
    """Say whether a variable or key name looks like it holds a secret.

    The name is split into words (``HF_TOKEN``, ``accessToken``, ``--api-key``). It is secret
    when a word is TOKEN, KEY, SECRET, PASSWORD / PASSWD / PASSPHRASE / PASS, PW, PAT,
    CREDENTIAL(S), AUTH / AUTHORIZATION, BEARER or COOKIE, or ends like one (``apikey``,
    ``authtoken``, ``dbpassword``), or is PWD after another word (``DB_PWD``, not ``PWD``).
    Words that count or time tokens or name model shapes are not secrets: ``max_tokens``,
    ``output_tokens``, ``first_token_s``, ``token_ids``, ``tokenizer``,
    ``num_key_value_heads``, ``sort_key``, ``bypass``, ``passed``.

    Parameters
    ----------
    name : str
        A variable name, dictionary key or command-line flag.

    Returns
    -------
    bool
        True when values under this name must never be written.
    """
    words = _words(str(name)[:200])
    for i, word in enumerate(words):
        if word in _BENIGN_WORDS:
            continue
        after = words[i + 1] if i + 1 < len(words) else ""
        before = words[i - 1] if i else ""
        if (word, after) in _BENIGN_PAIRS or (word in ("token", "key") and before in _BENIGN_BEFORE):
            continue
        if word in _SECRET_WORDS or word.endswith(_SECRET_ENDINGS) or (word == "pwd" and i > 0):
            return True
    return False


def secret_env_values(environ: Mapping[str, str]) -> list[str]:
    """Return the values of the secret-named variables of an environment, longest first.

    Compute them once and pass them to :func:`redact_string` for many strings (the gradebook does).

    Parameters
    ----------
    environ : mapping
        An environment, e.g. ``os.environ``.

    Returns
    -------
    list of str
        Values of variables :func:`is_secret_name` calls secret, long enough to be one.
    """
    values = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def _basic(match: re.Match[str]) -> str:
    """Redact ``Basic <base64>`` when the base64 holds ``user:password``."""
    import base64
    import binascii

    try:
        decoded = base64.b64decode(match.group(1) + "=" * (-len(match.group(1)) % 4), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return "Basic " + REDACTED if b":" in decoded else match.group(0)


def redact_string(text: str, secrets: Sequence[str]) -> str:
    """Return text with the given secret values and every secret-looking pattern replaced.

    Parameters
    ----------
    text : str
        Any text.
    secrets : sequence of str
        Known secret values (:func:`secret_env_values`).

    Returns
    -------
    str
        The text, secrets replaced by ``REDACTED``.
    """
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SECRET_VALUE.sub(REDACTED, text)
    text = _BASIC.sub(_basic, text)
    text = _URL_USERINFO.sub(REDACTED + "@", text)
    text = _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}" if is_secret_name(m.group(1)) else m.group(0), text)
    return _COLON_ASSIGNMENT.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}{REDACTED}"
            if is_secret_name(m.group(1)) and m.group(3) != REDACTED.strip("[]")
            else m.group(0)
        ),
        text,
    )


def redact_text(text: str, *, environ: Mapping[str, str] | None = None) -> str:
    """Return text with every secret replaced by ``REDACTED`` (the rules of :func:`redact`).

    Parameters
    ----------
    text : str
        Any text (a message, a CSV cell).
    environ : mapping, optional
        Environment whose secret-named values are searched for; ``os.environ`` when omitted.

    Returns
    -------
    str
        The text, secrets replaced.
    """
    return redact_string(text, secret_env_values(os.environ if environ is None else environ))


def redact(data: Any, *, environ: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """Return a copy of JSON-ready data with every secret replaced by ``REDACTED``.

    A value is a secret when its key is a secret name (:func:`is_secret_name`, at any depth),
    when it follows a secret flag in a list (``["--api-key", "..."]``), when it contains the
    value of a secret-named environment variable, or when it looks like a credential
    (``sk-...``, ``hf_...``, ``ghp_...``, ``github_pat_...``, ``AKIA...``, ``Bearer ...``,
    ``Basic <base64 of user:password>``, an ``Authorization:`` or ``X-Api-Key:`` header, any
    user-info in a URL, ``NAME=value`` or ``NAME: value`` with a secret NAME).

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
    secrets = secret_env_values(os.environ if environ is None else environ)
    changed: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            new = redact_string(value, secrets)
            if new != value:
                changed.append(path)
            return new
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                new_key = redact_string(str(key), secrets)
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
