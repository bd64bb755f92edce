"""The ``okrcal`` command line: one entry point, one module per subcommand.

Exit codes: 0 success, 2 bad input or usage (message names file, row and column), 1 other failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# subcommand -> module defining ``add_arguments(parser)`` and ``run(args) -> int``
_COMMANDS: dict[str, tuple[str, str]] = {
    "calibrate": ("service.cmd_calibrate", "calibrate a grades CSV offline and write the results"),
    "serve": ("service.cmd_serve", "run the HTTP service (embedded Redis unless REDIS_URL)"),
    "keys": ("service.cmd_keys", "create, list or revoke API keys"),
    "worker": ("service.cmd_worker", "run calibration workers in a separate process"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported (start-up time:
    ``okrcal calibrate`` need not import the web stack of ``serve``)."""
    parser = argparse.ArgumentParser(prog="okrcal", description="OKR grade calibration")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    only = given[0] if given and given[0] in _COMMANDS else None
    args = build_parser(only).parse_args(given)
    module = importlib.import_module(_COMMANDS[args.command][0])
    code: int = module.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
