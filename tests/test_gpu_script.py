"""``scripts/gpu/run_gpu_lab.py``: the comparison it writes, and its vLLM-alone phase on the CPU build.

The GPU run itself happens on a GPU host (``verification/reference/gpu/README.md``). Here the
script's vLLM-alone phase runs for real on the CPU build with the tiny model, so the code that
starts vLLM's own OpenAI server, loads it through the kit's load generator and compares it with the
kit phase is exercised wherever the tests run, not only on GPU time.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "run_gpu_lab.py"
RATES = (2.0, 4.0)


def _script():
    spec = importlib.util.spec_from_file_location("run_gpu_lab", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(ttft_p50: float, tokens_per_s: float) -> dict:
    return {"deploy_s": 10.0, "output_tokens_per_s": tokens_per_s, "ttft_p50_s": ttft_p50, "e2e_p99_s": None}


def test_compare_puts_kit_and_vllm_side_by_side_with_ratios():
    script = _script()
    kit = {"rows": {"distributed-2rps": _row(0.2, 100.0), "distributed-4rps": _row(0.3, 150.0)}}
    vllm = {"rows": {"vllm-2rps": _row(0.1, 100.0), "vllm-4rps": _row(0.1, 200.0)}}
    table = script.compare(kit, vllm, list(RATES))
    assert set(table) == {"2rps", "4rps"}
    assert table["2rps"]["ttft_p50_s"] == {"kit": 0.2, "vllm": 0.1, "ratio": 2.0}
    assert table["4rps"]["output_tokens_per_s"]["ratio"] == pytest.approx(0.75)
    assert table["4rps"]["e2e_p99_s"]["ratio"] is None  # a missing number is no ratio, not a crash


def test_compare_names_each_door_and_leaves_out_doors_not_run():
    script = _script()
    vllm = {"rows": {"vllm-2rps": _row(0.1, 100.0), "vllm-4rps": _row(0.1, 200.0)}}
    kit = {"rows": {"direct-ingress-2rps": _row(0.11, 100.0), "direct-ingress-4rps": _row(0.12, 190.0)}}
    table = script.compare(kit, vllm, list(RATES))
    assert set(table) == {"direct-ingress-2rps", "direct-ingress-4rps"}  # no distributed rows: none run
    assert table["direct-ingress-4rps"]["ttft_p50_s"]["ratio"] == pytest.approx(1.2)
    kit["rows"]["distributed-2rps"] = _row(0.3, 100.0)
    assert set(script.compare(kit, vllm, list(RATES))) == {"2rps", "direct-ingress-2rps", "direct-ingress-4rps"}
    assert script.parse_args(["--out", "x"]).doors == ["distributed"]
    assert script.parse_args(["--out", "x", "--doors", "distributed", "direct-ingress"]).doors == [
        "distributed", "direct-ingress"]


def _args(out: Path, **changes):
    argv = ["--phase", "vllm", "--gpus", "0", "--model", "tiny", "--tp", "1", "--pp", "1", "--rates"]
    argv += [f"{r:g}" for r in RATES] + ["--duration-s", "5", "--max-tokens", "16", "--prompt-tokens", "32"]
    argv += ["--max-model-len", "512", "--max-num-seqs", "16", "--out", str(out)]
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        argv[argv.index(flag) + 1] = str(value)
    return argv


def _earlier_kit_phase(script, out: Path, argv: list[str]) -> None:
    """What a kit phase run into the same ``--out`` leaves behind (its numbers are made up here)."""
    args = script.args_dict(script.parse_args(argv))
    kit_rows = {f"distributed-{r:g}rps": _row(0.05, 50.0) for r in RATES}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"args": {**args, "phase": "kit"}, "kit": {"rows": kit_rows}}))


def test_an_earlier_phase_with_other_parameters_is_not_compared(tmp_path):
    script = _script()
    argv = _args(tmp_path)
    _earlier_kit_phase(script, tmp_path, _args(tmp_path, max_tokens=64))
    args = script.parse_args(argv)
    assert script._earlier_phases(tmp_path / "result.json", args) == {}
    _earlier_kit_phase(script, tmp_path, argv)
    assert set(script._earlier_phases(tmp_path / "result.json", args)) == {"kit", "kit_args"}


@pytest.mark.slow
def test_vllm_alone_phase_runs_on_the_cpu_build_and_is_compared_with_the_kit_phase(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    script = _script()
    argv = _args(tmp_path)
    _earlier_kit_phase(script, tmp_path, argv)
    assert script.main(argv) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    rows = result["vllm"]["rows"]
    assert set(rows) == {f"vllm-{r:g}rps" for r in RATES}
    for name, row in rows.items():
        assert row["requests"] > 0 and row["ok"] == row["requests"], (name, row)
        assert row["output_tokens_per_s"] > 0 and 0 < row["ttft_p50_s"] <= row["e2e_p99_s"], (name, row)
    assert result["vllm"]["deploy_s"] > 0
    compare = result["compare"]
    assert set(compare) == {f"{r:g}rps" for r in RATES}
    assert compare["2rps"]["ttft_p50_s"]["kit"] == 0.05
    assert compare["2rps"]["ttft_p50_s"]["ratio"] == pytest.approx(0.05 / rows["vllm-2rps"]["ttft_p50_s"])
    assert result["kit"]["rows"]  # the earlier phase is kept beside the new one
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"hist-ttft-vllm-vllm-2rps.png", "timeline-vllm-vllm-4rps.png"} <= figures, figures
    assert "Application startup complete" in (tmp_path / "vllm-server.log").read_text()


def test_a_gpu_count_gives_workers_that_own_the_gpus_and_a_head_without():
    script = _script()
    assert script.cluster_layout(0) == {}  # no GPU: the embedded CPU default
    one, two, three = script.cluster_layout(1), script.cluster_layout(2), script.cluster_layout(3)
    assert (one["num_nodes"], one["gpus_per_node"]) == (2, 1)  # head + the worker that owns the GPU
    assert (two["num_nodes"], two["gpus_per_node"]) == (3, 1)  # two stages can cross nodes
    assert (three["num_nodes"], three["gpus_per_node"]) == (2, 3)
    assert one["gpu_mode"] == "physical"


@pytest.mark.slow
def test_notebook_phase_runs_notebook_02_itself_on_a_cluster_it_started(tmp_path):
    """The GPU check's notebook phase on the CPU build: the script starts the cluster, papermill runs
    notebook 02 against its address, and the script reads the notebook's own verification log."""
    script = _script()
    argv = ["--phase", "notebook", "--gpus", "0", "--model", "tiny", "--max-num-seqs", "4"]
    argv += ["--coordinator-max-concurrency", "1", "--duration-s", "8", "--engine-duration-s", "6"]
    argv += ["--sweep-rates", "1", "--sweep-duration-s", "3", "--max-tokens", "16", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    notebook = result["notebook"]
    assert notebook["run"]["ok"], notebook["run"]
    assert notebook["parameters"]["cluster_address"]  # the notebook connected to the script's cluster
    assert {row["regime"] for row in notebook["table"]} == {"healthy", "coordinator-bound", "engine-bound"}
    for row in notebook["table"]:
        assert row["e2e_n"] > 0 and row["ttft_n"] == row["e2e_n"], row  # a first token on every answer
    log = json.loads((tmp_path / notebook["log"]).read_text())
    assert log["papermill"]["injected_parameters"]["backend"] == "cpu"
    assert (tmp_path / "02_load_exercise.ipynb").exists()
