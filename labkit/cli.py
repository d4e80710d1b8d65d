"""Command line: ``labkit <subcommand>``, every command in this one module, thin over the library.

The library's modules never print; the commands here call them and print what they return. Each
``_add_<command>`` adds one subcommand and sets ``func`` (``args -> int``); library imports happen
inside the command, so ``labkit --help`` stays fast. Exit codes: 0 success, 1 a check failed
(``verify`` found problems, a notebook failed), 2 bad usage, 3 a :class:`~labkit.errors.LabkitError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, LabkitError

__all__ = ["EXIT_CHECK_FAILED", "EXIT_LABKIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_LABKIT_ERROR = 3


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand.

    Returns
    -------
    argparse.ArgumentParser
        The top-level parser.
    """
    from labkit import __version__

    parser = argparse.ArgumentParser(prog="labkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_run, _add_load, _add_diagnose, _add_plot, _add_verify_env, _add_grade, _add_model, _add_cluster):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        The exit code (see the module docstring).
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except LabkitError as err:
        print(f"labkit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_LABKIT_ERROR


# -- labkit run ---------------------------------------------------------------------------------
def _add_run(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="execute every chapter notebook headless (papermill)")
    parser.add_argument("--out", default=None, help="run folder (default verification/runs/<timestamp>/)")
    parser.add_argument("--notebook", action="append", dest="notebooks", help="only this notebook (repeatable)")
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter; VALUE is read as JSON when it parses, else as text",
    )
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.set_defaults(func=_cli_run)


def _parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            msg = f"Parameter '{item}' has no '='. Write NAME=VALUE, e.g. -p rate_rps=8"
            raise ConfigError(msg, field="parameter", value=item)
        key, value = item.split("=", 1)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _cli_run(args: Any) -> int:
    from labkit.run import run_lab

    out = args.out
    if out and Path(out).name == "runs":  # `make run` passes the runs folder: add a timestamp
        out = str(Path(out) / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    started = time.monotonic()
    run = run_lab(
        out,
        notebooks=args.notebooks,
        parameters=_parse_parameters(args.parameter),
        stop_on_failure=args.stop_on_failure,
        progress=lambda line: print(line, flush=True),
    )
    print(repr(run))
    print(f"outputs: {run.out_dir} ({time.monotonic() - started:.0f} s in all)")
    return 0 if run.ok else 1


# -- labkit load ----------------------------------------------------------------------------
def _add_load(subparsers: Any) -> None:
    from labkit.load.config import APIS, ARRIVALS, LoadConfig

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(LoadConfig)}
    p = subparsers.add_parser(
        "load",
        help="Generate load against an OpenAI-compatible endpoint.",
        description="Generate load; write records (JSONL) and a summary (JSON).",
    )
    p.add_argument("--url", required=True, help=helps["url"])
    p.add_argument("--model", default=None, help=helps["model"])
    p.add_argument("--api", choices=APIS, default="completions", help=helps["api"])
    p.add_argument("--no-stream", dest="stream", action="store_false", help="Do not stream (no TTFT).")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson", help=helps["arrival"])
    p.add_argument("--rate", dest="rate_rps", type=float, default=None, help=helps["rate_rps"])
    p.add_argument("--burstiness", type=float, default=1.0, help=helps["burstiness"])
    p.add_argument("--ramp-to", dest="ramp_to_rps", type=float, default=None, help=helps["ramp_to_rps"])
    p.add_argument("--sweep", default=None, help="Comma-separated rates: run once per rate (e.g. 1,2,4).")
    p.add_argument("--users", type=int, default=None, help=helps["users"])
    p.add_argument("--think-time", dest="think_time_s", type=float, default=0.0, help=helps["think_time_s"])
    p.add_argument("--num-requests", type=int, default=None, help=helps["num_requests"])
    p.add_argument("--duration", dest="duration_s", type=float, default=None, help=helps["duration_s"])
    p.add_argument("--warmup", dest="warmup_requests", type=int, default=0, help=helps["warmup_requests"])
    p.add_argument("--max-tokens", type=int, default=16, help=helps["max_tokens"])
    p.add_argument("--prompt-tokens", type=int, default=32, help=helps["prompt_tokens"])
    p.add_argument("--prompt-file", default=None, help=helps["prompt_file"])
    p.add_argument("--tokenizer", default=None, help=helps["tokenizer"])
    p.add_argument("--seed", type=int, default=0, help=helps["seed"])
    p.add_argument("--timeout", dest="timeout_s", type=float, default=60.0, help=helps["timeout_s"])
    p.add_argument("--hard-stop", dest="hard_stop_s", type=float, default=None, help=helps["hard_stop_s"])
    p.add_argument("--max-concurrency", type=int, default=None, help=helps["max_concurrency"])
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help=helps["headers"])
    p.add_argument("--ignore-eos", action="store_true", help=helps["ignore_eos"])
    p.add_argument("--temperature", type=float, default=None, help=helps["temperature"])
    p.add_argument("--short-slice", action="store_true", help=helps["short_slice"])
    p.add_argument("--out", default="load-results", help="Output folder for records.jsonl and summary.json.")
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT objective (s) for goodput.")
    p.add_argument("--slo-e2e", type=float, default=None, help="End-to-end objective (s) for goodput.")
    p.add_argument("--slo-tpot", type=float, default=None, help="TPOT objective (s) for goodput.")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="No progress bar.")
    p.set_defaults(func=_cmd_load)


def _config_from_args(args: Any, records_path: str) -> Any:
    from labkit.load.config import LoadConfig

    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            msg = f"--header {item!r} is not NAME:VALUE. Write e.g. --header 'X-Team: blue'."
            raise ConfigError(msg, field="headers", value=item)
        headers[name.strip()] = value.strip()
    names = {f.name for f in dataclasses.fields(LoadConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and k != "headers"}
    return LoadConfig(**kwargs, headers=headers, records_path=records_path)


_EXIT_GRACE_S = 10.0


def _interrupt_with_deadline(message: str) -> Any:
    """Return a SIGINT handler: stop the run now, and exit at most ``_EXIT_GRACE_S`` later.

    Ctrl-C raises KeyboardInterrupt, which ends the run and keeps its records (each is written and
    flushed as it finishes). Should the shutdown hang anyway (seen once in a test run on a loaded
    machine, cause not found), a timer ends the process with status 130; nothing is lost then.
    """

    def handler(signum: int, frame: Any) -> None:
        def give_up() -> None:
            print(message, file=sys.stderr, flush=True)
            os._exit(130)

        timer = threading.Timer(_EXIT_GRACE_S, give_up)
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: no grace
        raise KeyboardInterrupt

    return handler


def _cmd_load(args: Any) -> int:
    from labkit.load.api import run_load, run_sweep

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.sweep.split(",")] if args.sweep else None
    if rates:
        args.rate_rps = rates[0]
    config = _config_from_args(args, str(out / "records.jsonl"))
    slo = {
        k: v
        for k, v in (("ttft_s", args.slo_ttft), ("e2e_s", args.slo_e2e), ("tpot_s", args.slo_tpot))
        if v is not None
    } or None
    message = f"labkit load: interrupted; finished requests are in {out}"
    previous = signal.signal(signal.SIGINT, _interrupt_with_deadline(message))
    try:
        results = (
            run_sweep(config, rates, progress=args.progress) if rates else [run_load(config, progress=args.progress)]
        )
    except KeyboardInterrupt:
        print(message, file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    summaries = []
    for result in results:
        summary = result.summary(slo=slo)
        summaries.append({"run": result.to_dict(), "summary": summary.to_dict()})
        print(_table(result, summary))
    doc = summaries[0] if len(summaries) == 1 else {"sweep": summaries}
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"records: {', '.join(str(r.records_path) for r in results)}\nsummary: {out / 'summary.json'}")
    return 0


def _table(result: Any, summary: Any) -> str:
    """A short fixed-width table of one run (milliseconds)."""
    d = summary.to_dict()
    offered = f"{result.offered_rate_rps:.1f}" if result.offered_rate_rps else "closed"
    achieved = f"{result.achieved_rate_rps:.1f}" if result.achieved_rate_rps else "n/a"
    lines = [
        f"requests {d['requests']}  ok {d['ok']}  errors {d['errors']}  "
        f"offered {offered} req/s  achieved {achieved} req/s",
        f"{'metric (ms)':<18}{'count':>8}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}",
    ]
    for name, m in d["metrics"].items():
        p = m["percentiles"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1e3:.2f}"

        lines.append(
            f"{name:<18}{m['count']:>8}{ms(p.get('p50')):>10}{ms(p.get('p90')):>10}"
            f"{ms(p.get('p99')):>10}{ms(p.get('p99.9')):>10}"
        )
    return "\n".join(lines)


# -- labkit diagnose ------------------------------------------------------------------------
def _add_diagnose(subparsers: Any) -> None:
    from labkit.diagnose import Thresholds

    p = subparsers.add_parser(
        "diagnose",
        help="Diagnose a load run: coordinator bottleneck, engine saturation, imbalance?",
        description="Read a run's records (JSONL) and optional telemetry (JSON from "
        "TelemetryRecorder.to_dict()), print the verdict with its evidence.",
    )
    p.add_argument("records", help="records file written by `labkit load` / run_load (JSONL)")
    p.add_argument("--telemetry", default=None, help="telemetry JSON (TelemetryRecorder.to_dict())")
    p.add_argument("--name", default=None, help="configuration name (default: the file's stem)")
    p.add_argument(
        "--engine-capacity",
        type=int,
        default=None,
        help="requests one replica runs at once (max_ongoing_requests / max_num_seqs)",
    )
    p.add_argument("--expected-replicas", type=int, default=None, help="replicas deployed")
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"override a threshold, e.g. tail_ratio_e2e=3 (names: "
        f"{', '.join(f.name for f in dataclasses.fields(Thresholds))})",
    )
    p.add_argument("--json", dest="json_out", default=None, help="also write the diagnosis as JSON here")
    p.set_defaults(func=_cmd_diagnose)


def _parse_thresholds(items: Sequence[str]) -> Any:
    from labkit.diagnose import Thresholds

    names = {f.name: f.type for f in dataclasses.fields(Thresholds)}
    values: dict[str, Any] = {}  # an int for min_requests, floats for the others
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in names:
            msg = f"--threshold {item!r} is not NAME=VALUE with NAME in {sorted(names)}."
            raise ConfigError(msg, field="threshold", value=item)
        try:
            values[key] = int(raw) if key == "min_requests" else float(raw)
        except ValueError:
            msg = f"--threshold {item!r}: {raw!r} is not a number. Example: tail_ratio_e2e=3."
            raise ConfigError(msg, field=key, value=raw) from None
    return Thresholds(**values)


def _cmd_diagnose(args: Any) -> int:
    from labkit.diagnose import diagnose
    from labkit.load import read_records
    from labkit.telemetry import TelemetryRecorder

    records = read_records(args.records)
    telemetry = None
    if args.telemetry:
        try:
            data = json.loads(Path(args.telemetry).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            msg = f"Cannot read telemetry '{args.telemetry}': {err}. Pass a TelemetryRecorder.to_dict() JSON."
            raise ConfigError(msg, field="telemetry", value=args.telemetry) from None
        telemetry = TelemetryRecorder.from_dict(data)
    result = diagnose(
        records,
        telemetry,
        thresholds=_parse_thresholds(args.threshold),
        name=args.name or Path(args.records).stem,
        engine_capacity=args.engine_capacity,
        expected_replicas=args.expected_replicas,
    )
    print(repr(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


# -- labkit plot ----------------------------------------------------------------------------
def _add_plot(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plot",
        help="Draw the figures of one or more load runs (PNG + SVG).",
        description="Per run: latency histogram, request share and timeline; across runs: a CDF "
        "overlay. Names are the files' stems unless --name is given.",
    )
    p.add_argument("records", nargs="+", help="records files written by `labkit load` (JSONL)")
    p.add_argument("--out", required=True, help="folder for the figures")
    p.add_argument(
        "--name", action="append", default=None, help="configuration name, once per records file, in the same order"
    )
    p.add_argument(
        "--telemetry",
        action="append",
        default=None,
        help="telemetry JSON (TelemetryRecorder.to_dict()), once per records file",
    )
    p.add_argument("--metric", default="e2e", help="latency metric (labkit.stats.METRICS)")
    p.add_argument("--log-x", action="store_true", help="logarithmic latency axis")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: Any) -> int:
    from labkit.load import read_records
    from labkit.plots import plot_latency_cdf, plot_latency_histogram, plot_request_share, plot_timeline, save_figure
    from labkit.telemetry import TelemetryRecorder

    names = args.name or [Path(p).stem for p in args.records]
    tels = args.telemetry or []
    for flag, given in (("--name", names), ("--telemetry", tels)):
        if given and len(given) != len(args.records):
            msg = f"{flag} was given {len(given)} times for {len(args.records)} records files; give it once per file."
            raise ConfigError(msg, field=flag, value=given)
    out = Path(args.out)
    runs = {name: read_records(path) for name, path in zip(names, args.records, strict=True)}
    written: list[Path] = []
    for i, (name, recs) in enumerate(runs.items()):
        stem = out / name
        written += save_figure(
            plot_latency_histogram(recs, args.metric, name=name, log_x=args.log_x), f"{stem}-histogram"
        )
        tel = None
        if tels:
            tel = TelemetryRecorder.from_dict(json.loads(Path(tels[i]).read_text(encoding="utf-8")))
        if args.metric != "itl":
            written += save_figure(plot_timeline(recs, tel, args.metric, name=name), f"{stem}-timeline")
        try:
            written += save_figure(plot_request_share(recs, name=name), f"{stem}-share")
        except ConfigError as err:
            print(f"labkit plot: no request-share figure for {name}: {err}")
    written += save_figure(plot_latency_cdf(runs, args.metric, log_x=args.log_x), out / "cdf")
    print("\n".join(str(p) for p in written))
    return 0


# -- labkit verify / env --------------------------------------------------------------------
def _cmd_verify(args: Any) -> int:
    from labkit.grade import load_rubric, verify_logs

    rubric = load_rubric(args.rubric)
    failed = 0
    results = verify_logs(args.logs, rubric=rubric)
    for file, findings in results.items():
        problems = [f for f in findings if f.severity in ("error", "warning")]
        failed += bool(problems)
        print(f"{'FAIL' if problems else 'OK  '} {file}")
        for finding in findings:
            if finding.severity != "info" or args.verbose:
                print(f"     {finding.severity:<7} {finding.code}: {finding.message}")
    if len(results) > 1:
        print(f"{failed} of {len(results)} files failed.")
    return 1 if failed else 0


def _cmd_env(args: Any) -> int:
    from labkit.record import record_environment

    print(json.dumps(record_environment(), indent=2, sort_keys=False))
    return 0


def _add_verify_env(subparsers: Any) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="check verification logs one by one: complete, unedited, consistent; exit 1 when one fails",
    )
    verify.add_argument("logs", nargs="+", metavar="LOG", help="verification log files")
    verify.add_argument("--rubric", default=None, help="rubric JSON (default: verification/rubric.json)")
    verify.add_argument("-v", "--verbose", action="store_true", help="also print informational findings")
    verify.set_defaults(func=_cmd_verify)
    env = subparsers.add_parser("env", help="print the environment part of a verification log as JSON")
    env.set_defaults(func=_cmd_env)


# -- labkit grade ---------------------------------------------------------------------------
def _cmd_grade(args: Any) -> int:
    from labkit.grade import grade_directory

    book = grade_directory(args.directory, rubric=args.rubric)
    paths = book.write(args.out if args.out else Path(args.directory) / "gradebook")
    flagged = sum(1 for r in book.rows if r.flags)
    print(f"Graded {len(book.rows)} learner/exercise rows from {book.source}: {flagged} flagged.")
    for kind, p in paths.items():
        print(f"  {kind:<9} {p}")
    return 0


def _add_grade(subparsers: Any) -> None:
    grade = subparsers.add_parser("grade", help="grade a folder of verification logs (CSV + HTML report)")
    grade.add_argument("directory", metavar="DIR", help="folder of verification logs")
    grade.add_argument("--out", default=None, help="output folder (default: DIR/gradebook)")
    grade.add_argument("--rubric", default=None, help="rubric JSON (default: verification/rubric.json)")
    grade.set_defaults(func=_cmd_grade)


# -- labkit model ---------------------------------------------------------------------------
def _add_model(subparsers: Any) -> None:
    parser = subparsers.add_parser("model", help="make the offline tiny model and print its path and sha256")
    parser.add_argument("--dir", default=None, help="target directory (default: the cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.set_defaults(func=_cli_model)


def _cli_model(args: Any) -> int:
    from labkit.models import hash_directory, make_tiny_model

    path = make_tiny_model(args.dir, seed=args.seed, force=args.force)
    print(f"{path}\nsha256 {hash_directory(path)}")
    return 0


# -- labkit cluster -------------------------------------------------------------------------
def _add_cluster(subparsers: Any) -> None:
    from labkit.cluster import ClusterConfig

    parser = subparsers.add_parser("cluster", help="start the embedded cluster, print its topology, stop it")
    parser.add_argument("--nodes", type=int, default=ClusterConfig.num_nodes)
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.set_defaults(func=_cli_cluster)


def _cli_cluster(args: Any) -> int:
    from labkit.cluster import find_ray_processes, start_cluster

    with start_cluster(num_nodes=args.nodes, gpus_per_node=args.gpus_per_node) as handle:
        print(repr(handle))
        session = handle.temp_dir
    left = find_ray_processes(session) if session else []
    print(f"stopped; Ray processes left: {len(left)}")
    return 0 if not left else 1
