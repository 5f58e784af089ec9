"""The ``progeo`` command.

Thin by design: each module in this package defines ``register(subparsers)`` that adds its
subcommands and binds them to a handler taking the parsed arguments. Handlers translate the
arguments into typed values or config dataclasses and call the library; they import heavy
dependencies (torch, faiss) lazily so that ``progeo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from progeo import __version__
from progeo.errors import ProgeoError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="progeo",
        description="Visual geo-localization with CLIP: ProGEO retrieval and GEM city/country classification.",
    )
    parser.add_argument("--version", action="version", version=f"progeo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except ProgeoError as exc:
        print(f"progeo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # training runs raise Interrupted: what was saved, the command that continues
        if os.environ.get("RANK", "0") == "0":  # one message for a distributed run
            name = " ".join(str(n) for n in (args.command, getattr(args, "stage", None)) if n)
            print(f"progeo {name}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
