"""The operator's commands on a datastore: init, check, render, status, reset, sudi-lab."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from ..stores.base import StoreError

from .common import (DEFAULT_DATASTORE, UsageError, datastore_arguments, device_spec, open_store, positive, step_registry,
                     template_context, timeline_file)

log = logging.getLogger("pnp_service")


def cmd_init(args: argparse.Namespace) -> int:
    from ..stores.embedded import write_example

    try:
        write_example(args.file)
    except FileExistsError:
        raise UsageError(f"{args.file} exists already; pnp-service never overwrites a declarations file") from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"wrote {args.file} (mode 0600): two example devices; edit it, then: pnp-service check --datastore {args.file}")
    return 0


def _declarations(args: argparse.Namespace):
    return _declarations_file(args).current()


def _declarations_file(args: argparse.Namespace):
    from ..stores.embedded import Declarations, default_template_dirs
    from ..validation import DeclarationsError

    try:
        return Declarations(args.datastore, default_template_dirs(args.datastore), step_registry().names(),
                            announce=False, context=template_context(args))
    except DeclarationsError as exc:
        raise StoreError(str(exc)) from None


#: The serial a location's declaration is rendered with by ``check`` (the switch's own is known once it is bound).
CHECK_SERIAL = "LOCATION0"


def cmd_check(args: argparse.Namespace) -> int:
    from ..composition import needing_sudi, sudi_policy

    declarations = _declarations_file(args)
    current = declarations.current()
    problems = list(current.errors.values())
    for location in current.locations.values():  # rendered as a bound switch would be, with a stand-in serial
        _, error = declarations.plan_for(location.for_serial(CHECK_SERIAL))
        if error:
            problems.append(f"pnp-location {location.neighbor} {location.port}: "
                            f"{error.replace(f'pnp-device {CHECK_SERIAL}: ', '')}")
    if sudi_policy(args) is None:
        problems += [f"pnp-device {serial}: asks for SUDI authentication but the listener has no --sudi-ca "
                     "(give check and serve --sudi-ca FILE)" for serial in needing_sudi(current.declarations)]
    for message in problems:
        print(f"{args.datastore}: {message}", file=sys.stderr)
    ok = len(current.plans)
    located = f" (and {len(current.locations)} by location)" if current.locations else ""
    print(f"{args.datastore}: {len(current.declarations)} devices declared{located}, {ok} planned, "
          f"{len(problems)} with errors")
    return 1 if problems else 0


def cmd_sudi_lab(args: argparse.Namespace) -> int:
    from ..simulator.lab_pki import write_lab

    written = write_lab(args.directory, list(args.device), "rsa" if args.rsa else "ec")
    print("\n".join(written))
    print(f"lab only: serve --sudi-ca {written[0]}; agent --sudi-cert SERIAL.pem --sudi-key SERIAL.key", file=sys.stderr)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    current = _declarations(args)
    if args.serial not in current.declarations:
        raise UsageError(f"{args.serial} is not declared in {args.datastore}")
    if args.serial in current.errors:
        raise StoreError(current.errors[args.serial])
    work = current.plans[args.serial]
    print(f"# {args.serial}: revision {work.revision}, {len(work.steps)} steps")
    for number, step in enumerate(work.steps, 1):
        params = {name: value for name, value in step.params.items() if name != "config"}
        shown = " ".join(f"{name}={value!r}" for name, value in params.items())
        print(f"{number}. {step.id} ({step.type}) {shown}".rstrip())
        if "config" in step.params:
            print("   configuration served at the signed download URL:\n")
            print("\n".join(f"     {line}" for line in step.params["config"].splitlines()))
            print()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .. import views
    from ..timeline import TimelineDb

    if args.serial and args.format not in ("table", "json"):
        raise UsageError(f"status {args.serial} prints a table or json, not {args.format}")
    timeline = TimelineDb(timeline_file(args, create=False), read_only=True) if args.serial else None
    store = open_store(args, read_only=True, tolerate_invalid=True)
    try:
        while True:
            snapshot = store.snapshot()
            if timeline is not None:
                shown = views.device(snapshot, args.serial, timeline.of(args.serial), args.format)
                if shown is None:
                    print(f"pnp-service status: {args.serial} is not declared, has no status, never called in and has "
                          "no timeline", file=sys.stderr)
                    return 1
                output = shown
            else:
                output = views.render(snapshot, args.format)
            if args.watch:
                print("\033[H\033[2J" + time.strftime("%H:%M:%S ") + output, flush=True)
            else:
                print(output)
            for problem in snapshot.problems:
                print(f"warning: {problem}", file=sys.stderr)
            if not args.watch:
                return 0
            time.sleep(args.watch)
            store.refresh()
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()


def cmd_reset(args: argparse.Namespace) -> int:
    from ..stores.base import UnknownSerial

    # A reset is its own commit on the controller: without a journal, so a listener's pending writes are never
    # replayed, committed or truncated from here.
    store = open_store(args, read_only=bool(getattr(args, "clixon_socket", None)), tolerate_invalid=True)
    for problem in store.problems():
        print(f"warning: {problem}", file=sys.stderr)
    failed = 0
    try:
        for serial in args.serial:
            try:
                print(store.reset(serial))
                note_reset(args, serial)
            except UnknownSerial as exc:
                print(f"pnp-service reset: {exc}", file=sys.stderr)
                failed += 1
    finally:
        store.close()
    return 1 if failed else 0


def note_reset(args: argparse.Namespace, serial: str) -> None:
    """The reset, in the device's timeline, when the listener keeps one here (never creates the file)."""
    import datetime as dt
    import os
    import sqlite3

    from ..timeline import Entry, TimelineDb

    path = timeline_file(args, create=False)
    if not os.path.exists(path):
        return
    try:
        db = TimelineDb(path)
        db.add({serial: [Entry(dt.datetime.now(dt.timezone.utc).replace(microsecond=0), "reset",
                               detail="status cleared by pnp-service reset")]})
        db.close()
    except sqlite3.Error as exc:
        print(f"warning: the reset is not in {serial}'s timeline ({path}: {exc})", file=sys.stderr)


def add_parsers(command) -> None:
    """Add this module's commands; ``command(name, help, description)`` makes each subparser."""
    init = command("init", "write a commented example declarations file",
                   "Write a commented example declarations file (never overwrites one).")
    init.add_argument("file", nargs="?", default=DEFAULT_DATASTORE, help="where (default: %(default)s)")
    init.set_defaults(func=cmd_init)

    check = command("check", "validate and render every declaration",
                    "Check a declarations file against the YANG and render every device's plan; exit 1 on any error.")
    datastore_arguments(check, clixon=False, state=False)
    check.add_argument("--sudi-ca", metavar="FILE", help="the CA bundle serve will get, if any: without it, "
                       "declarations with authentication sudi are errors")
    check.add_argument("--controller-ssh-key", metavar="FILE", help="the SSH public key serve will get, if any")
    check.set_defaults(func=cmd_check)

    lab = command("sudi-lab", "make a lab CA and SUDI certificates for the simulator",
                  "Make a lab root CA, a SUDI sub-CA and device certificates in Cisco's subject form "
                  "(PID:<pid> SN:<serial>), for trying SUDI authentication without hardware. Never for production.")
    lab.add_argument("directory", help="where to write ca.pem, SERIAL.pem and SERIAL.key")
    lab.add_argument("--device", action="append", default=[], type=device_spec, required=True, metavar="SERIAL:PID",
                     help="a device to make a certificate for (repeatable)")
    lab.add_argument("--rsa", action="store_true", help="RSA 2048 keys instead of ECDSA P-256")
    lab.set_defaults(func=cmd_sudi_lab)

    render = command("render", "print what a device would be sent (a dry run)",
                     "Print a declared device's planned steps and rendered configuration; nothing is written.")
    datastore_arguments(render, clixon=False, state=False)
    render.add_argument("serial")
    render.add_argument("--controller-ssh-key", metavar="FILE", help="the SSH public key serve will get, if any")
    render.set_defaults(func=cmd_render)

    status = command("status", "print each device's state (read-only)",
                     "Print declared devices (state, step, attempts, last contact, last error) and unclaimed ones. "
                     "Reads only; changes nothing.")
    datastore_arguments(status)
    status.add_argument("serial", nargs="?", help="one device: its state, hand-off and timeline (what happened to it, "
                        "newest last; docs/operations.md)")
    status.add_argument("--format", choices=["table", "json", "rfc7951", "xml"], default="table",
                        help="table; json: the table's rows; rfc7951 (JSON) or xml: the /pnp tree in the YANG's shape "
                        "(default: table)")
    status.add_argument("--state-dir", metavar="DIR", help="with --clixon-socket and a SERIAL: the listener's "
                        "--state-dir, where it keeps the timelines (default: as serve's)")
    status.add_argument("--watch", type=positive, nargs="?", const=2, default=0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status.set_defaults(func=cmd_status)

    reset = command("reset", "clear a device's status so it starts over",
                    "Clear the status of declared devices, so each starts over at its next poll.")
    datastore_arguments(reset)
    reset.add_argument("--journal", help=argparse.SUPPRESS)
    reset.add_argument("serial", nargs="+")
    reset.set_defaults(func=cmd_reset)
