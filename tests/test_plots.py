"""Tests of labkit.plots: files are written, percentile lines carry their values, titles name the run."""

from __future__ import annotations

import random
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from labkit.errors import ConfigError
from labkit.load import RequestRecord
from labkit.plots import (
    plot_latency_cdf,
    plot_latency_histogram,
    plot_percentiles_vs_load,
    plot_request_share,
    plot_timeline,
    save_figure,
)
from labkit.telemetry import TelemetrySample


def make_records(n=120, *, base_s=0.2, tail_s=0.0, seed=0, replicas=("r0", "r1"), errors=0, rate_rps=10.0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sched = i / rate_rps
        lat = base_s + rng.uniform(0, 0.02) + (tail_s if i % 20 == 0 else 0.0)
        rep = replicas[i % len(replicas)] if replicas else None
        out.append(RequestRecord(request_id=f"q{i}", scheduled_s=sched, sent_s=sched + 0.001,
                                 done_s=sched + lat, first_token_s=sched + lat / 5, last_token_s=sched + lat,
                                 output_tokens=16, replica_id=rep,
                                 node_id=(f"node-{rep}-{'x' * 40}" if rep else None)))
    for j in range(errors):
        out.append(RequestRecord(request_id=f"e{j}", scheduled_s=j, sent_s=j, done_s=j + 0.05,
                                 status="error", error="HTTP 503"))
    return out


def line_labels(ax):
    return [ln.get_label() for ln in ax.get_lines()]


def texts(fig):
    out = []
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
    return out


def assert_saved(fig, tmp_path, stem):
    paths = save_figure(fig, tmp_path / "figs" / stem)
    assert [p.suffix for p in paths] == [".png", ".svg"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    return paths


@pytest.mark.parametrize("metric, log_x", [("e2e", False), ("ttft", True), ("tpot", False)])
def test_histogram_marks_labelled_percentiles(tmp_path, metric, log_x):
    recs = make_records(tail_s=0.5)
    fig = plot_latency_histogram(recs, metric, name="gated", log_x=log_x)
    (ax,) = fig.axes
    labels = line_labels(ax)
    assert [lb.split(" = ")[0] for lb in labels] == ["p50", "p95", "p99"]
    if metric == "e2e":
        p99 = np.percentile([r.done_s - r.scheduled_s for r in recs], 99)
        assert f"p99 = {p99 * 1e3:.0f} ms" in labels
        assert f"p99 = {p99 * 1e3:.0f} ms" in [t.strip() for t in texts(fig)]
    assert ax.get_title().startswith("gated: ")
    assert ax.get_xscale() == ("log" if log_x else "linear")
    assert_saved(fig, tmp_path, f"hist-{metric}")


def test_histogram_uses_seconds_for_long_latencies():
    fig = plot_latency_histogram(make_records(base_s=12.0), name="slow")
    labels = line_labels(fig.axes[0])
    assert all(lb.endswith(" s") for lb in labels)
    assert "(s)" in fig.axes[0].get_xlabel()


def test_histogram_counts_failures_like_stats_unless_told_not_to():
    from labkit.stats import summarize_latencies

    recs = make_records(n=100, errors=5)
    for r in recs[-5:]:
        r.timeout_s = 2.0
    fig = plot_latency_histogram(recs, name="x")
    (ax,) = fig.axes
    assert "n=105" in ax.get_title()
    assert "5 failed, at their time-out" in [t.get_text() for t in ax.get_legend().get_texts()][0]
    p99 = summarize_latencies(recs, "e2e", ci=False).percentiles["p99"]
    assert f"p99 = {p99 * 1e3:.0f} ms" in line_labels(ax)
    ok_only = plot_latency_histogram(recs, name="x", include_failures=False)
    assert "n=100" in ok_only.axes[0].get_title()


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": "latency"}, "Unknown metric"),
    ({"bins": 0}, "bins=0"),
])
def test_histogram_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plot_latency_histogram(make_records(), **kwargs)


def test_histogram_without_values_says_why():
    with pytest.raises(ConfigError, match="No requests of 'x'"):
        plot_latency_histogram(make_records(n=0, errors=3), "ttft", name="x")


def test_cdf_overlays_runs(tmp_path):
    runs = {"gated": make_records(tail_s=0.8, seed=1), "distributed": make_records(seed=2)}
    fig = plot_latency_cdf(runs, name="topologies")
    (ax,) = fig.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("gated: p50 ") and ", p99 " in legend[0]
    assert legend[1].startswith("distributed: ")
    annotated = [t for t in texts(fig) if t.startswith("p99 = ")]
    assert len(annotated) == 2
    assert {"p50", "p95", "p99"} <= {t.strip() for t in texts(fig)}
    assert "topologies" in ax.get_title()
    assert_saved(fig, tmp_path, "cdf")
    tail_fig = plot_latency_cdf(runs, tail=True, log_x=True)
    assert tail_fig.axes[0].get_yscale() == "log" and tail_fig.axes[0].get_xscale() == "log"


def test_cdf_single_run_and_empty():
    fig = plot_latency_cdf(make_records(), name="one")
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("one: ")
    with pytest.raises(ConfigError, match="no runs"):
        plot_latency_cdf({})


def test_percentiles_vs_load_finds_the_knee(tmp_path):
    sweep = {rate: make_records(base_s=0.2 * (1 if rate < 8 else 4), rate_rps=rate) for rate in (2, 4, 8, 16)}
    fig = plot_percentiles_vs_load(sweep, name="distributed")
    (ax,) = fig.axes
    labels = line_labels(ax)
    assert labels[:3] == ["p50", "p95", "p99"]
    assert "knee \u2248 8 req/s" in labels
    assert list(ax.get_lines()[0].get_xdata()) == [2, 4, 8, 16]
    assert_saved(fig, tmp_path, "sweep")


def test_percentiles_vs_load_accepts_results_and_pairs():
    results = [SimpleNamespace(records=make_records(rate_rps=r), config=SimpleNamespace(rate_rps=r))
               for r in (4, 1)]
    fig = plot_percentiles_vs_load(results)
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 4]
    assert "knee" not in " ".join(line_labels(fig.axes[0]))
    fig = plot_percentiles_vs_load([(1, make_records()), (2, make_records())])
    assert len(fig.axes[0].get_lines()) == 3
    with pytest.raises(ConfigError, match="rate_rps"):
        plot_percentiles_vs_load([SimpleNamespace(records=make_records())])


def test_request_share_per_node_and_replica(tmp_path):
    recs = make_records(n=90, replicas=("r0", "r0", "r1"))
    fig = plot_request_share(recs, name="imbalanced")
    assert len(fig.axes) == 2
    assert "imbalanced" in fig.get_suptitle()
    node_ax, rep_ax = fig.axes
    assert "Jain's index 0.90" in rep_ax.get_title()
    assert "even share = 50%" in line_labels(rep_ax)
    assert {"60 (67%)", "30 (33%)"} == {t.get_text() for t in rep_ax.texts}
    assert all(len(t.get_text()) <= 10 for t in node_ax.get_xticklabels())  # long node ids shortened
    assert_saved(fig, tmp_path, "share")
    assert len(plot_request_share(recs, by="replica_id").axes) == 1


def test_request_share_errors():
    with pytest.raises(ConfigError, match="Allowed"):
        plot_request_share(make_records(), by="pid")
    with pytest.raises(ConfigError, match="attribution"):
        plot_request_share(make_records(replicas=()), by="replica_id")


def _telemetry(records, *, cpu=True, gpu=True):
    out = []
    end = max(r.done_s for r in records)
    for k in range(int(end * 10) + 1):
        t = k / 10
        for rep in ("r0", "r1"):
            out.append(TelemetrySample(t_s=t, wall_s=t, node_id="n", role="replica", component_id=rep,
                                       running=2, waiting=k % 3, cpu_percent=80.0 if cpu else None))
        out.append(TelemetrySample(t_s=t, wall_s=t, node_id="n", role="coordinator", component_id="c",
                                   waiting=k % 5, cpu_percent=99.0 if cpu else None))
        if gpu:
            out.append(TelemetrySample(t_s=t, wall_s=t, node_id="n", role="gpu", component_id="gpu0",
                                       gpu_util_percent=50.0))
    return out


def test_timeline_with_telemetry(tmp_path):
    recs = make_records(tail_s=0.5, errors=2)
    fig = plot_timeline(recs, _telemetry(recs), name="gated")
    axes = fig.axes
    assert len(axes) == 4  # latency, engine, CPU, and the GPU twin of the engine axis
    lat, eng, cpu, gpu_twin = axes
    assert any(lb.startswith("p99 = ") for lb in line_labels(lat))
    assert "failed (2)" in [t.get_text() for t in lat.get_legend().get_texts()]
    eng_labels = line_labels(eng)
    assert "engine r0 running+waiting" in eng_labels and "coordinator queue" in eng_labels
    assert "gpu0 util %" in line_labels(gpu_twin)
    assert "coordinator c" in line_labels(cpu)
    assert "gated" in fig.get_suptitle()
    # the samples are drawn on the records' clock: first engine point at t_s - t0
    t0 = min(r.scheduled_s for r in recs)
    assert eng.get_lines()[1].get_xdata()[0] == pytest.approx(0.0 - t0)
    assert_saved(fig, tmp_path, "timeline")


def test_timeline_cpu_prefers_process_sampler_over_reporter():
    recs = make_records()
    tel = _telemetry(recs, gpu=False)
    tel += [TelemetrySample(t_s=k / 2, wall_s=0.0, node_id="n", role="replica", component_id="r0",
                            cpu_percent=150.0, source="process") for k in range(20)]
    fig = plot_timeline(recs, tel)
    cpu_ax = fig.axes[2]
    line = next(ln for ln in cpu_ax.get_lines() if ln.get_label() == "replica r0")
    assert set(line.get_ydata()) == {150.0}


def test_timeline_without_telemetry_shows_client_inflight():
    fig = plot_timeline(make_records(), None, name="plain")
    assert len(fig.axes) == 2
    assert line_labels(fig.axes[1]) == ["in flight (client)"]
    with pytest.raises(ConfigError, match="no records"):
        plot_timeline([], None)
    with pytest.raises(ConfigError, match="per request"):
        plot_timeline(make_records(), None, "itl")


def test_save_figure_drops_known_suffix_and_rejects_unknown_format(tmp_path):
    fig = plot_latency_histogram(make_records())
    paths = save_figure(fig, tmp_path / "h.png", formats=("png",))
    assert paths == [tmp_path / "h.png"]
    with pytest.raises(ConfigError, match="Supported"):
        save_figure(fig, tmp_path / "h", formats=("docx",))


def test_import_is_light():
    code = "import labkit.plots, labkit.diagnose, labkit.telemetry, sys; " \
           "print(sorted(m for m in ('matplotlib', 'numpy', 'ray', 'psutil', 'pynvml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_plot_writes_every_figure(tmp_path, capsys):
    import json

    from labkit.cli import build_parser

    paths = []
    for name, tail in (("gated", 0.5), ("distributed", 0.0)):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in make_records(tail_s=tail)), encoding="utf-8")
        paths.append(str(p))
    parser = build_parser()
    args = parser.parse_args(["plot", *paths, "--out", str(tmp_path / "figs")])
    assert args.func(args) == 0
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert "cdf.png" in written and "gated-histogram.svg" in written and "distributed-timeline.png" in written
    assert "gated-share.png" in written
    assert all((tmp_path / "figs" / n).stat().st_size > 1000 for n in written)
    bad = parser.parse_args(["plot", *paths, "--out", str(tmp_path), "--name", "only-one"])
    with pytest.raises(ConfigError, match="once per file"):
        bad.func(bad)


def test_a_percentile_is_drawn_only_where_a_request_lies_above_it():
    """30 requests have no request above their p99: the sweep leaves p99 out there and says so."""
    few = make_records(n=30)
    many = make_records(n=200)
    fig = plot_percentiles_vs_load({1: few, 2: many})
    (ax,) = fig.axes
    p99 = next(line for line in ax.get_lines() if line.get_label() == "p99")
    ys = list(p99.get_ydata())
    assert ys[0] != ys[0] and ys[1] == ys[1]  # NaN at the 30-request point only
    note = " ".join(t.get_text() for t in ax.texts)
    assert "p99 at 1 req/s" in note and "n = 30, 200" in note
    hist = plot_latency_histogram(few)
    labels = line_labels(hist.axes[0])
    assert not any(label.startswith("p99 =") for label in labels)
    assert any("p99 not marked: n = 30" in label for label in hist.axes[0].get_legend_handles_labels()[1])


def test_hop_figure_has_one_row_per_hop_and_the_p50_of_each_run_in_its_legend():
    from labkit.plots import plot_hops

    stamps = {"proxy_at_s": 0.001, "replica_at_s": 0.004, "submit_at_s": 0.005, "first_token_at_s": 0.020}
    records = [
        RequestRecord(request_id=f"r{i}", scheduled_s=0.0, sent_s=0.0, done_s=0.05, first_token_s=0.025, server=stamps)
        for i in range(5)
    ]
    fig = plot_hops({"door A": records, "door B": {"routing": [0.010, 0.012]}}, title="hops")
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[:2] == ["send -> ingress (proxy) receives", "ingress -> replica (router, handle calls)"]
    assert len(fig.axes) == 6  # to_ingress, routing, coordinator_wait, replica, engine_first, first_return
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["door A: p50 3.00 ms (n=5)", "door B: p50 11.00 ms (n=2)"]
    wait = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]  # no gate: every wait is 0
    assert wait == ["door A: p50 0.00 ms (n=5, 5 at <= 0 not drawn)"]
    with pytest.raises(ConfigError, match="No hop stamps"):
        plot_hops({"vLLM alone": [RequestRecord(request_id="x", scheduled_s=0, sent_s=0, done_s=1)]})
