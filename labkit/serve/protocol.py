"""The OpenAI request the kit's replicas accept: validation, pure (no Ray, no vLLM).

Owns :class:`BadRequest` (a 4xx with an OpenAI-style error body) and :func:`parse_request` (a
completions or chat body checked against the deployment's limits and normalised). The replicas
(:mod:`labkit.serve._replica`) call it on every request; tests call it directly.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BadRequest", "parse_request"]


class BadRequest(Exception):
    """A request the server refuses with a 4xx and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> bytes:
        """Return the OpenAI-style JSON error body."""
        err = {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}
        return json.dumps({"error": err}).encode()


def parse_request(raw: bytes, *, kind: str, served_name: str, limits: dict[str, int]) -> dict[str, Any]:
    """Validate an OpenAI completions / chat body and return the normalised fields.

    Parameters
    ----------
    raw : bytes
        The request body.
    kind : str
        ``"completions"`` or ``"chat"``.
    served_name : str
        The only model name this server accepts.
    limits : dict
        ``max_tokens_limit``, ``max_prompt_chars``, ``max_body_bytes``.

    Returns
    -------
    dict
        ``prompt`` or ``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``stream``,
        ``include_usage``, ``seed``, ``stop``, ``ignore_eos``.

    Raises
    ------
    BadRequest
        With status 400 (malformed or out of bounds), 404 (unknown model) or 413 (too large).
    """
    if len(raw) > limits["max_body_bytes"]:
        raise BadRequest(
            413, f"Request body of {len(raw)} bytes exceeds the limit of {limits['max_body_bytes']} bytes."
        )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"Request body is not valid JSON: {err}.") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "Request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise BadRequest(400, f"'model' is required. This server serves '{served_name}'.", "model")
    if model != served_name:
        raise BadRequest(
            404, f"The model '{model}' does not exist. This server serves '{served_name}'.", "model", "model_not_found"
        )
    out: dict[str, Any] = {}
    limit_chars = limits["max_prompt_chars"]
    if kind == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest(
                400, "'prompt' is required and must be a non-empty string (one prompt per request).", "prompt"
            )
        if len(prompt) > limit_chars:
            raise BadRequest(400, f"'prompt' has {len(prompt)} characters; the limit is {limit_chars}.", "prompt")
        out["prompt"] = prompt
    else:
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                for m in messages
            )
        ):
            raise BadRequest(
                400,
                "'messages' is required: a non-empty list of {role, content} objects with string content.",
                "messages",
            )
        if sum(len(m["content"]) for m in messages) > limit_chars:
            raise BadRequest(400, f"'messages' exceed {limit_chars} characters in all.", "messages")
        out["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    max_key = "max_completion_tokens" if kind == "chat" and "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(max_key, 16 if kind == "completions" else limits["max_tokens_limit"])
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(400, f"'{max_key}' must be a positive integer, got {max_tokens!r}.", max_key)
    if max_tokens > limits["max_tokens_limit"]:
        raise BadRequest(
            400, f"'{max_key}'={max_tokens} exceeds this server's limit of {limits['max_tokens_limit']}.", max_key
        )
    out["max_tokens"] = max_tokens
    for name, default, low, high in (("temperature", 1.0, 0.0, 2.0), ("top_p", 1.0, 0.0, 1.0)):
        value = body.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise BadRequest(400, f"'{name}' must be a number in [{low}, {high}], got {value!r}.", name)
        out[name] = float(value)
    if body.get("n", 1) != 1:
        raise BadRequest(400, "Only n=1 is supported.", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(400, f"'stream' must be true or false, got {stream!r}.", "stream")
    out["stream"] = stream
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest(400, "'stream_options' must be an object.", "stream_options")
    out["include_usage"] = bool(options.get("include_usage", False))
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(400, f"'seed' must be an integer, got {seed!r}.", "seed")
    out["seed"] = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4):
        raise BadRequest(400, "'stop' must be a string or a list of at most 4 strings.", "stop")
    out["stop"] = stop
    out["ignore_eos"] = bool(body.get("ignore_eos", False))
    return out
