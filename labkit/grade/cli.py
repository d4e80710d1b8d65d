"""The ``labkit grade`` command: grade a folder and write the gradebook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labkit.grade.scoring import grade_directory

__all__ = ["register_cli"]


def _cmd_grade(args: Any) -> int:
    book = grade_directory(args.directory, rubric=args.rubric)
    paths = book.write(args.out if args.out else Path(args.directory) / "gradebook")
    flagged = sum(1 for r in book.rows if r.flags)
    print(f"Graded {len(book.rows)} learner/exercise rows from {book.source}: {flagged} flagged.")
    for kind, p in paths.items():
        print(f"  {kind:<9} {p}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``grade`` to the labkit command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level parser's subparsers.
    """
    grade = subparsers.add_parser("grade", help="grade a folder of verification logs (CSV + HTML report)")
    grade.add_argument("directory", metavar="DIR", help="folder of verification logs")
    grade.add_argument("--out", default=None, help="output folder (default: DIR/gradebook)")
    grade.add_argument("--rubric", default=None, help="rubric JSON (default: verification/rubric.json)")
    grade.set_defaults(func=_cmd_grade)
