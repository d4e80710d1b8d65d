"""Command line: ``labkit <subcommand>``, thin over the library.

Each stage module that has commands exposes ``register_cli(subparsers)``; it adds its
subcommands and sets ``func`` (``args -> int``) on each. Exit codes: 0 success, 1 a check
failed (``verify`` found problems), 2 bad usage, 3 a :class:`~labkit.errors.LabkitError`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from labkit.errors import LabkitError

__all__ = ["EXIT_CHECK_FAILED", "EXIT_LABKIT_ERROR", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_LABKIT_ERROR = 3

# Modules that contribute subcommands, in the order they appear in --help.
_COMMAND_MODULES = ("run", "load", "diagnose", "plots", "record", "grade", "models", "cluster")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand.

    Returns
    -------
    argparse.ArgumentParser
        The top-level parser.
    """
    import importlib

    parser = argparse.ArgumentParser(prog="labkit", description=__doc__.splitlines()[0])
    from labkit import __version__

    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"labkit.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"labkit.{name}":
                raise
            continue
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(subparsers)
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
