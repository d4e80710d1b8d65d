"""Models: the offline tiny Llama, architecture-only configs of real sizes, and Hub ids.

Owns everything about *which weights* an engine loads:

- :func:`make_tiny_model` writes a real Llama-architecture checkpoint (``config.json``,
  ``model.safetensors``, a byte-level BPE tokenizer trained with ``tokenizers``) from a seeded
  numpy generator. It needs no network, takes about a second, is cached, and is byte-for-byte
  deterministic: the same files (same sha256) on every machine.
- :data:`ARCHITECTURES` holds the shapes of real models (the chapter's Llama-2-70B among them);
  :func:`make_dummy_model` writes such a config beside the tiny tokenizer so that vLLM's
  ``load_format="dummy"`` can profile a realistic size on GPUs without downloading weights.
- :func:`resolve_model` turns what the learner typed (a preset name, a directory or a Hub id)
  into a :class:`ModelSpec`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labkit.errors import ModelError

__all__ = [
    "ARCHITECTURES",
    "TINY_MODEL_NAME",
    "ModelSpec",
    "hash_directory",
    "make_dummy_model",
    "make_tiny_model",
    "resolve_model",
]

TINY_MODEL_NAME = "labkit-tiny-llama"
_GENERATOR_VERSION = 2  # bump when the bytes of the tiny model change on purpose (2: vocabulary padded)

# The tiny model's shape: real Llama blocks (RMSNorm, RoPE, GQA, SwiGLU), just small.
_TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 1024,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "float32",
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
}
_SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>"]
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Shapes of real models (public configs), for load_format="dummy" on GPUs.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
    },
    "llama-2-13b": {
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
    },
    "llama-2-70b": {
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
    },
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    },
    "llama-3.1-70b": {
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    },
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """What an engine should load.

    Attributes
    ----------
    model : str
        A local directory or a Hub id, as vLLM's ``model`` argument.
    served_name : str
        The name clients put in ``"model"`` of their requests.
    load_format : str
        ``"auto"`` for real weights, ``"dummy"`` for random weights of a real shape.
    local : bool
        Whether ``model`` is a directory on this machine.
    parameters : int or None
        Number of parameters when known from the config.
    """

    model: str
    served_name: str
    load_format: str = "auto"
    local: bool = True
    parameters: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-ready dict."""
        return asdict(self)


def hash_directory(path: str | Path) -> str:
    """Return the sha256 over every file of a directory (names and bytes, sorted by name).

    Parameters
    ----------
    path : str or Path
        A model directory (or a single file).

    Returns
    -------
    str
        Hex digest, stable across machines for byte-identical contents.

    Raises
    ------
    ModelError
        If the path does not exist.
    """
    root = Path(path)
    if not root.exists():
        msg = (
            f"Model path '{root}' does not exist. Make the tiny model with "
            "labkit.make_tiny_model() or pass an existing directory."
        )
        raise ModelError(msg, path=str(root))
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        rel = file.name if root.is_file() else file.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def count_parameters(config: dict[str, Any]) -> int:
    """Return the parameter count of a Llama config (embeddings and head included).

    Parameters
    ----------
    config : dict
        A Llama ``config.json`` as a dict.

    Returns
    -------
    int
        Number of parameters.
    """
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads)
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = 3 * hidden * inter
    per_layer = attn + mlp + 2 * hidden
    head = 0 if config.get("tie_word_embeddings") else vocab * hidden
    return vocab * hidden + config["num_hidden_layers"] * per_layer + hidden + head


def _default_cache_dir() -> Path:
    base = os.environ.get("LABKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "labkit"
    )
    return Path(base) / "models"


def _training_corpus() -> list[str]:
    """Deterministic English-like text about serving, for training the tokenizer."""
    import random  # stdlib; Random(seed).choice is stable across Python versions

    words = [
        "the",
        "a",
        "an",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "across",
        "between",
        "each",
        "every",
        "one",
        "two",
        "four",
        "eight",
        "node",
        "nodes",
        "replica",
        "replicas",
        "request",
        "requests",
        "token",
        "tokens",
        "latency",
        "throughput",
        "percentile",
        "tail",
        "p50",
        "p95",
        "p99",
        "queue",
        "proxy",
        "router",
        "coordinator",
        "engine",
        "engines",
        "gpu",
        "gpus",
        "cpu",
        "tensor",
        "pipeline",
        "parallel",
        "model",
        "models",
        "serve",
        "serving",
        "cluster",
        "ray",
        "vllm",
        "batch",
        "batches",
        "prefill",
        "decode",
        "cache",
        "memory",
        "time",
        "first",
        "last",
        "load",
        "balance",
        "balancer",
        "bottleneck",
        "saturation",
        "histogram",
        "inference",
        "learner",
        "is",
        "are",
        "was",
        "were",
        "be",
        "will",
        "can",
        "should",
        "must",
        "not",
        "and",
        "or",
        "but",
        "if",
        "then",
        "when",
        "while",
        "because",
        "so",
        "fast",
        "slow",
        "high",
        "low",
        "more",
        "less",
        "small",
        "large",
        "wait",
        "waits",
        "waiting",
        "spike",
        "spikes",
        "under",
        "over",
        "quick",
        "brown",
        "fox",
        "jumps",
        "lazy",
        "dog",
        "hello",
        "world",
        "question",
        "answer",
        "what",
        "why",
        "how",
        "where",
        "who",
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "10",
        "16",
        "32",
        "64",
        "100",
        "128",
        "256",
        "512",
        "1024",
        "ms",
        "s",
        "%",
        ".",
        ",",
        ";",
        ":",
        "!",
        "?",
        "(",
        ")",
        "-",
        "'",
        '"',
    ]
    rng = random.Random(20260101)
    lines = []
    for _ in range(3000):
        length = rng.randint(4, 18)
        sentence = " ".join(rng.choice(words) for _ in range(length))
        lines.append(sentence[0].upper() + sentence[1:] + ".")
    return lines


def _write_tokenizer(directory: Path, vocab_size: int, model_max_length: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # heavy

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    _pad_vocabulary(tokenizer, vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _SPECIAL_TOKENS[1],
        "eos_token": _SPECIAL_TOKENS[2],
        "pad_token": _SPECIAL_TOKENS[0],
        "unk_token": None,
        "add_bos_token": True,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": _CHAT_TEMPLATE,
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(
        directory / "special_tokens_map.json",
        {"bos_token": _SPECIAL_TOKENS[1], "eos_token": _SPECIAL_TOKENS[2], "pad_token": _SPECIAL_TOKENS[0]},
    )


def _pad_vocabulary(tokenizer: Any, vocab_size: int) -> None:
    """Give every id the model can emit a visible text (`` w<id>``).

    The BPE learns fewer tokens than the model's vocabulary (759 of 1,024 for the tiny model, and
    a dummy Llama-2 emits ids up to 32,000): ids past the learned ones decode to nothing, and a
    stream whose first tokens decode to nothing sends its first event late, so time to first
    token would be measured late (seen on GPUs: 46% of requests of a dummy Llama-2-7B had no text
    event at all). Padding tokens are ordinary added tokens, never special.
    """
    from tokenizers import AddedToken  # heavy

    have = tokenizer.get_vocab_size()
    if have < vocab_size:
        tokenizer.add_tokens(
            [AddedToken(f"\u0120w{i}", normalized=False, special=False) for i in range(have, vocab_size)]
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _tiny_weights(config: dict[str, Any], seed: int) -> dict[str, Any]:
    import numpy as np  # heavy; only when making weights

    rng = np.random.Generator(np.random.PCG64(seed))
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config["head_dim"]
    kv = config["num_key_value_heads"]
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    std = config["initializer_range"]

    def normal(*shape: int) -> Any:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors: dict[str, Any] = {"model.embed_tokens.weight": normal(vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        tensors[f"{prefix}.self_attn.q_proj.weight"] = normal(heads * head_dim, hidden)
        tensors[f"{prefix}.self_attn.k_proj.weight"] = normal(kv * head_dim, hidden)
        tensors[f"{prefix}.self_attn.v_proj.weight"] = normal(kv * head_dim, hidden)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, heads * head_dim)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = normal(inter, hidden)
        tensors[f"{prefix}.mlp.up_proj.weight"] = normal(inter, hidden)
        tensors[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, inter)
        tensors[f"{prefix}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["lm_head.weight"] = normal(vocab, hidden)
    return tensors


def make_tiny_model(directory: str | Path | None = None, *, seed: int = 0, force: bool = False) -> Path:
    """Make (or reuse) the offline tiny Llama model and return its directory.

    Parameters
    ----------
    directory : str or Path, optional
        Where to put it. Default: ``$LABKIT_CACHE_DIR/models/labkit-tiny-llama-v<N>-s<seed>``
        (``~/.cache/labkit`` when the variable is unset).
    seed : int
        Seed of the weights; the same seed gives the same bytes everywhere.
    force : bool
        Rebuild even when a complete copy exists.

    Returns
    -------
    Path
        The model directory (config.json, model.safetensors, tokenizer files).

    Raises
    ------
    ModelError
        If the directory cannot be written.
    """
    target = (
        Path(directory) if directory else (_default_cache_dir() / f"{TINY_MODEL_NAME}-v{_GENERATOR_VERSION}-s{seed}")
    )
    marker = target / ".complete"
    if marker.exists() and not force:
        return target
    from safetensors.numpy import save_file  # heavy

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    except OSError as err:
        msg = f"Cannot write the tiny model under '{target.parent}': {err}. Set LABKIT_CACHE_DIR to a writable folder."
        raise ModelError(msg, path=str(target)) from err
    try:
        config = dict(_TINY_CONFIG)
        _write_json(staging / "config.json", config)
        _write_json(
            staging / "generation_config.json",
            {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False},
        )
        save_file(_tiny_weights(config, seed), str(staging / "model.safetensors"), metadata={"format": "pt"})
        _write_tokenizer(staging, config["vocab_size"], config["max_position_embeddings"])
        (staging / ".complete").write_text(f"{TINY_MODEL_NAME} v{_GENERATOR_VERSION} seed {seed}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def make_dummy_model(name: str, directory: str | Path | None = None) -> Path:
    """Write an architecture-only model of a real shape for ``load_format="dummy"``.

    The directory holds a Llama ``config.json`` of that shape and the tiny model's tokenizer
    (its ids fit in every listed vocabulary), and no weights: vLLM makes random ones on the GPU.

    Parameters
    ----------
    name : str
        One of :data:`ARCHITECTURES` (e.g. ``"llama-2-70b"``).
    directory : str or Path, optional
        Where to write it; default beside the tiny model in the cache.

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    ModelError
        If ``name`` is unknown.
    """
    if name not in ARCHITECTURES:
        msg = f"Unknown architecture '{name}'. Available: {sorted(ARCHITECTURES)}"
        raise ModelError(msg)
    target = Path(directory) if directory else _default_cache_dir() / f"dummy-{name}-v{_GENERATOR_VERSION}"
    target.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in _TINY_CONFIG.items() if k != "head_dim"}
    config.update(ARCHITECTURES[name])
    config["torch_dtype"] = "bfloat16"
    _write_json(target / "config.json", config)
    tiny = make_tiny_model()
    for file in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(tiny / file, target / file)
    from tokenizers import Tokenizer  # heavy

    tokenizer = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    _pad_vocabulary(tokenizer, config["vocab_size"])  # every id of this vocabulary decodes to text
    tokenizer.save(str(target / "tokenizer.json"))
    return target


def resolve_model(model: str | Path | None = None, *, served_name: str | None = None) -> ModelSpec:
    """Turn a model argument into a :class:`ModelSpec`.

    Parameters
    ----------
    model : str or Path, optional
        ``None`` or ``"tiny"`` for the offline tiny model; ``"dummy:<arch>"`` (e.g.
        ``"dummy:llama-2-70b"``) for a real shape with random weights; a directory; or a Hub id
        such as ``"meta-llama/Llama-2-7b-hf"`` (passed through: vLLM downloads it where the user
        has access).
    served_name : str, optional
        The name clients use; default: the preset name, the directory name or the Hub id.

    Returns
    -------
    ModelSpec
        The resolved model.

    Raises
    ------
    ModelError
        If a local path does not exist or a preset is unknown.
    """
    text = str(model) if model is not None else "tiny"
    if text == "tiny":
        path = make_tiny_model()
        params: int | None = count_parameters(_TINY_CONFIG)
        return ModelSpec(str(path), served_name or TINY_MODEL_NAME, "auto", True, params)
    if text.startswith("dummy:"):
        arch = text.split(":", 1)[1]
        path = make_dummy_model(arch)
        config = json.loads((path / "config.json").read_text())
        return ModelSpec(str(path), served_name or arch, "dummy", True, count_parameters(config))
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            msg = (
                f"Model directory '{path}' has no config.json. Pass a Hugging Face-format model directory, "
                "'tiny', or 'dummy:<arch>'."
            )
            raise ModelError(msg, path=str(path))
        config = json.loads((path / "config.json").read_text())
        try:
            params = count_parameters(config)
        except KeyError:
            params = None
        return ModelSpec(str(path.resolve()), served_name or path.name, "auto", True, params)
    looks_local = (
        text.startswith((".", "/", "~")) or os.sep in text.strip("/").split("/", 1)[-1] or not _HUB_ID.match(text)
    )
    if looks_local:
        msg = (
            f"Model path '{text}' does not exist. Use 'tiny' (the offline tiny model), "
            f"'dummy:<arch>' with arch in {sorted(ARCHITECTURES)}, an existing directory, or a Hub id like 'org/name'."
        )
        raise ModelError(msg, path=text)
    return ModelSpec(text, served_name or text, "auto", False, None)
