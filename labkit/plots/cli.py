"""The ``labkit plot`` subcommand: records files in, every figure of each run out (PNG + SVG).

Owns :func:`register_cli` (called by :mod:`labkit.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labkit.errors import ConfigError
from labkit.plots.activity import plot_request_share, plot_timeline
from labkit.plots.latency import plot_latency_cdf, plot_latency_histogram
from labkit.plots.style import save_figure

__all__ = ["register_cli"]


# ---------------------------------------------------------------------------------------------
# Command line: ``labkit plot RECORDS.jsonl [...] --out DIR``
# ---------------------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add the ``plot`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.
    """
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
    import json

    from labkit.load import read_records
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
