"""The ``pnp-service`` command line: serve, init, check, render, status, reset, import, claim, agent, option43.

Owns the top-level parser and turning every expected failure into one line that says what to fix (exit status 1,
or 2 for a bad command line).  Each command group is a module that adds its own subcommands: ``serve``,
``operate`` (init, check, render, status, reset, sudi-lab), ``importing`` (import, claim) and ``agent`` (agent,
option43); ``common`` holds what they share.  What a listener is made of is built by
:mod:`pnp_service.composition`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__, logs
from ..stores.base import StoreError
from . import agent, importing, operate, serve
from .common import (DEFAULT_DATASTORE, DEFAULT_PORT, JOURNAL_NAME, SECRET_NAME, UsageError, default_state_dir,
                     log_arguments, open_store)

GROUPS = (serve, operate, importing, agent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pnp-service",
        description="Day-0 provisioning of Cisco devices over PnP, driven by a YANG controller or a declarations file.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    log_arguments(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description)
        log_arguments(sub, suppress=True)
        return sub

    for group in GROUPS:
        group.add_parsers(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"pnp-service {args.command}: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"pnp-service {args.command}: {exc}", file=sys.stderr)
        return 1


__all__ = ["DEFAULT_DATASTORE", "DEFAULT_PORT", "JOURNAL_NAME", "SECRET_NAME", "UsageError", "build_parser",
           "default_state_dir", "main", "open_store"]
