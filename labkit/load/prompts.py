"""Prompts of a load run: read from a prompt file, or made synthetic and deterministic under the seed.

Owns the optional tokenizer (transformers, imported only when a tokenizer is asked for).
"""

from __future__ import annotations

import json
import random
from typing import Any, cast

from labkit.errors import LoadGenError, MissingDependencyError
from labkit.load.config import LoadConfig

__all__ = ["make_prompts"]

# Synthetic prompts are made once and cycled through after this many.
_MAX_PROMPT_POOL = 4096

_WORDS = (  # noqa: SIM905 - a sentence reads better than 100 quoted words
    "the of and to in is that it for on with as was by at be this from or an are not have "
    "but one all were when there can more time which their if will each about how up out "
    "them then many some so these would other into has two like him see could no make than "
    "first been its who now people my made over did down only way find use may water long"
).split()


# --------------------------------------------------------------------------- prompts
def _load_tokenizer(name_or_path: str) -> Any:
    """Load a Hugging Face tokenizer (transformers is heavy: imported only here)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        msg = "Counting or making tokens needs transformers. Run pip install transformers"
        raise MissingDependencyError(msg) from None
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        msg = f"Cannot load tokenizer '{name_or_path}': {err}. Pass a local tokenizer directory."
        raise LoadGenError(msg) from None


def _read_prompt_file(path: str) -> list[str | list[dict[str, Any]]]:
    prompts: list[str | list[dict[str, Any]]] = []
    is_jsonl = path.endswith((".jsonl", ".json"))
    with open(path, encoding="utf-8") as fh:
        for k, line in enumerate(fh):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if not is_jsonl:
                prompts.append(line)
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                msg = f"Line {k + 1} of prompt file '{path}' is not JSON ({err}). Use one JSON object per line."
                raise LoadGenError(msg) from None
            if isinstance(obj, str):
                prompts.append(obj)
            elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                prompts.append(obj["messages"])
            elif isinstance(obj, dict) and isinstance(obj.get("prompt", obj.get("text")), str):
                prompts.append(cast(str, obj.get("prompt", obj.get("text"))))  # a str: checked just above
            else:
                msg = (
                    f"Line {k + 1} of prompt file '{path}' has neither 'prompt', 'text' nor 'messages'. "
                    'Write {"prompt": "..."} per line.'
                )
                raise LoadGenError(msg)
    if not prompts:
        msg = f"Prompt file '{path}' holds no prompts. Write one prompt per line."
        raise LoadGenError(msg)
    return prompts


def make_prompts(config: LoadConfig, count: int, *, tokenizer: Any = None) -> list[str | list[dict[str, Any]]]:
    """Make the prompts of a run, deterministic under ``config.seed``.

    Parameters
    ----------
    config : LoadConfig
        ``prompt_file`` (read in order, cycled), else synthetic prompts of
        ``prompt_tokens`` tokens: random token ids of ``config.tokenizer`` decoded to text
        and re-encoded to the exact length, or, with no tokenizer, random common English
        words (about one token each for BPE tokenizers).
    count : int
        How many prompts; at most 4096 distinct synthetic prompts are made (then reused).
    tokenizer : object, optional
        An already loaded tokenizer (``encode`` / ``decode`` / ``vocab_size``).

    Returns
    -------
    list
        Strings, or chat message lists from a JSONL prompt file.

    Raises
    ------
    LoadGenError
        The prompt file is empty or malformed, or the tokenizer cannot be loaded.
    """
    if config.prompt_file is not None:
        return _read_prompt_file(config.prompt_file)
    rng = random.Random(config.seed)
    n = config.prompt_tokens
    count = max(1, min(count, _MAX_PROMPT_POOL))
    if tokenizer is None and config.tokenizer is not None:
        tokenizer = _load_tokenizer(config.tokenizer)
    if tokenizer is None:
        return [" ".join(rng.choices(_WORDS, k=n)) for _ in range(count)]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(int(tokenizer.vocab_size)) if i not in special]
    prompts: list[str | list[dict[str, Any]]] = []
    for _ in range(count):
        ids = [rng.choice(vocab) for _ in range(n)]
        text = tokenizer.decode(ids)
        for _attempt in range(4):  # decode/encode is not an identity: nudge to the exact length
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == n:
                break
            ids = ids[:n] if len(ids) > n else ids + [rng.choice(vocab) for _ in range(n - len(ids))]
            text = tokenizer.decode(ids)
        prompts.append(text)
    return prompts
