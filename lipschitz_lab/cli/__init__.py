"""The ``lipschitz-lab`` command.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func``.  ``func``
takes the parsed namespace and returns an exit code.  Bad input raises
``ValueError`` (or :class:`UsageError`) naming the field and the value; ``main``
turns it into one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("derive", "lr", "train", "runs", "study", "demo")


class UsageError(ValueError):
    """Bad user input; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lipschitz-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"lipschitz_lab.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lipschitz_lab.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        print(f"lipschitz-lab: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:      # `lipschitz-lab runs list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("lipschitz-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
