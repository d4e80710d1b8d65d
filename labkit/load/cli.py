"""The ``labkit load`` subcommand: arguments to a :class:`~labkit.load.config.LoadConfig`, runs, a table.

Owns :func:`register_cli` (called by :mod:`labkit.cli`); it writes ``records.jsonl`` and
``summary.json`` into ``--out`` and prints one fixed-width table per run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError
from labkit.load.api import run_load, run_sweep
from labkit.load.config import APIS, ARRIVALS, LoadConfig
from labkit.load.records import LoadResult

__all__ = ["register_cli"]


# --------------------------------------------------------------------------- CLI
def register_cli(subparsers: Any) -> None:
    """Add the ``load`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.
    """
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


def _config_from_args(args: Any, records_path: str) -> LoadConfig:
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


def _table(result: LoadResult, summary: Any) -> str:
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
