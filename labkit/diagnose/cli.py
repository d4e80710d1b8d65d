"""The ``labkit diagnose`` command: read a run's records and telemetry, print the verdict."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from labkit.diagnose.results import Thresholds
from labkit.diagnose.verdict import diagnose
from labkit.errors import ConfigError

__all__ = ["register_cli"]

# ---------------------------------------------------------------------------------------------
# Command line: ``labkit diagnose RECORDS.jsonl``
# ---------------------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add the ``diagnose`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.
    """
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


def _parse_thresholds(items: Sequence[str]) -> Thresholds:
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
    import json
    from pathlib import Path

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
