"""Command line of the recorder: ``labkit verify LOG...`` and ``labkit env``.

Owns: :func:`register_cli`, which :mod:`labkit.cli` calls to add the two subcommands; the
checks ``verify`` runs live in :mod:`labkit.grade`.
"""

from __future__ import annotations

import json
from typing import Any

from labkit.record.environment import record_environment

__all__ = [
    "register_cli",
]

# --------------------------------------------------------------------------------------------
# CLI: labkit verify LOG..., labkit env
# --------------------------------------------------------------------------------------------


def _cmd_verify(args: Any) -> int:
    from labkit.grade import load_rubric, verify_logs  # the checks live with the grader

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
    print(json.dumps(record_environment(), indent=2, sort_keys=False))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``verify`` and ``env`` to the labkit command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level parser's subparsers.
    """
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
