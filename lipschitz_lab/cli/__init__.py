"""The lipschitz-lab command: derive the bounds, compute a rate, train, browse runs, run studies.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func``.  ``func``
takes the parsed namespace and returns an exit code.  Bad input raises
``ValueError`` (or :class:`UsageError`) naming the field and the value; ``main``
turns it into one line on stderr and exit code 2, never a traceback.

Every subcommand module listed in :data:`SUBCOMMANDS` must import: a broken
install fails loudly here rather than losing a command from ``--help``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("derive", "lr", "train", "runs", "study", "demo", "app")


class UsageError(ValueError):
    """Bad user input; printed as one line, exit code 2."""


class LaterHelp(str):
    """A help text computed only when help is shown: the choice lists come from
    :func:`lipschitz_lab.choices.choices`, which imports torch, and ``lipschitz-lab lr``
    should not pay for that.  ``LaterHelp(fn)``; ``fn()`` returns the text."""

    def __new__(cls, fn):
        text = super().__new__(cls, "(help)")
        text.fn = fn
        return text


class HelpFormatter(argparse.HelpFormatter):
    """Computes :class:`LaterHelp` texts when it formats them."""

    def _get_help_string(self, action):
        text = action.help
        return text.fn().replace("%", "%%") if isinstance(text, LaterHelp) else text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lipschitz-lab", description=__doc__.splitlines()[0],
                     epilog="Run 'lipschitz-lab COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"lipschitz_lab.cli.{name}").register(sub)
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
