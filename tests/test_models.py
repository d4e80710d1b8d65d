"""Tiny model determinism, architecture configs, model resolution errors."""

from __future__ import annotations

import json

import pytest

from labkit.errors import ModelError
from labkit.models import (
    ARCHITECTURES,
    count_parameters,
    hash_directory,
    make_dummy_model,
    make_tiny_model,
    resolve_model,
)


def test_tiny_model_is_byte_for_byte_deterministic(tmp_path):
    a = make_tiny_model(tmp_path / "a")
    b = make_tiny_model(tmp_path / "b")
    assert hash_directory(a) == hash_directory(b)
    assert {p.name for p in a.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    c = make_tiny_model(tmp_path / "c", seed=1)
    assert hash_directory(c) != hash_directory(a)


def test_tiny_model_is_cached(tmp_path):
    path = make_tiny_model(tmp_path / "m")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_model(tmp_path / "m") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_tokenizer_is_byte_level_bpe(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_tiny_model(tmp_path / "m"))
    text = "Tail latency spikes at p99 — ünïcode ok"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    vocab = json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"]
    assert len(tok) == vocab
    # Every id the model can emit decodes to visible text: a stream's first event is its first token.
    silent = [i for i in range(vocab) if not tok.decode([i]).strip() and i not in tok.all_special_ids]
    assert len(silent) < 40, silent  # byte tokens of whitespace and control characters
    assert tok.decode([vocab - 1]) == f" w{vocab - 1}"


def test_dummy_model_tokenizer_covers_the_architecture_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    path = make_dummy_model("llama-2-7b", tmp_path / "d")
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == 32000
    assert tok.decode([31999]) == " w31999"


def test_llama_2_70b_shape_has_70b_parameters(tmp_path):
    path = make_dummy_model("llama-2-70b", tmp_path / "d")
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 80 and config["num_key_value_heads"] == 8
    assert 68e9 < count_parameters(config) < 70e9
    assert not list(path.glob("*.safetensors"))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_resolves_as_dummy(name):
    spec = resolve_model(f"dummy:{name}")
    assert spec.load_format == "dummy" and spec.parameters > 1e9


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("./no/such/dir", "does not exist"),
        ("/definitely/missing", "does not exist"),
        ("dummy:gpt-9", "Unknown architecture 'gpt-9'"),
    ],
)
def test_bad_model_names_the_value_and_the_fix(model, error):
    with pytest.raises(ModelError, match=error):
        resolve_model(model)


def test_hub_id_passes_through():
    spec = resolve_model("meta-llama/Llama-2-7b-hf")
    assert spec.model == "meta-llama/Llama-2-7b-hf" and not spec.local


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.slow
def test_vllm_loads_the_tiny_model(tmp_path):
    """A real vLLM CPU engine loads the checkpoint and generates (in a child process: spawn guard)."""
    import subprocess
    import sys

    script = tmp_path / "gen.py"
    script.write_text(
        "import os, json\n"
        "os.environ['VLLM_CPU_KVCACHE_SPACE'] = '1'\n"
        "if __name__ == '__main__':\n"
        "    from vllm import LLM, SamplingParams\n"
        "    from labkit.models import make_tiny_model\n"
        "    llm = LLM(model=str(make_tiny_model()), max_model_len=256, dtype='float32', enforce_eager=True)\n"
        "    out = llm.generate(['Hello world'] * 3, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))\n"
        "    print('RESULT', json.dumps([len(o.outputs[0].token_ids) for o in out]))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=400)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(lines[0].split(" ", 1)[1]) == [8, 8, 8]
