"""The ``pnp-service`` command line: serve, status, reset, agent, option43.

Owns argument parsing, logging set-up and choosing a store; everything else is
called from the layers below.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from . import __version__
from .model import format_time
from .stores.base import Store, StoreError

log = logging.getLogger("pnp_service")

DEFAULT_PORT = 8080


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--datastore",
        metavar="FILE",
        help="embedded datastore: one XML file in the pnp-service YANG's shape (default: %(default)s)",
    )
    group.add_argument(
        "--clixon-socket",
        metavar="PATH",
        help="use a Clixon controller over its UNIX socket instead of a file "
        "(e.g. /usr/local/var/run/controller/controller.sock; needs clixon-pyapi)",
    )
    parser.set_defaults(datastore=None)


def open_store(args: argparse.Namespace, *, create: bool = True, read_only: bool = False) -> Store:
    if getattr(args, "clixon_socket", None):
        from .stores.clixon import ClixonStore  # imports clixon-pyapi: only on demand

        return ClixonStore(args.clixon_socket, journal_path=args.journal, read_only=read_only)
    from .stores.embedded import EmbeddedStore

    return EmbeddedStore(args.datastore or "pnp-datastore.xml", create=create)


def _secret(args: argparse.Namespace) -> bytes:
    from .downloads import load_or_create_secret

    path = args.secret_file
    if not path:
        base = args.datastore or "pnp-datastore.xml"
        path = (base if not args.clixon_socket else os.path.join(os.getcwd(), "pnp-service")) + ".secret"
    return load_or_create_secret(path)


# ---------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from .listener import ListenerSettings
    from .provisioner import Settings

    if bool(args.tls_cert) != bool(args.tls_key):
        raise StoreError("--tls-cert and --tls-key go together")
    for path in filter(None, (args.tls_cert, args.tls_key)):
        if not os.path.isfile(path):
            raise StoreError(f"TLS file {path} not found")
    if args.image_dir and not os.path.isdir(args.image_dir):
        raise StoreError(f"--image-dir {args.image_dir} is not a folder")
    settings = ListenerSettings(
        provisioning=Settings(max_attempts=args.max_attempts, retry_base_seconds=args.retry_seconds),
        max_body_bytes=args.max_body,
        public_url=args.public_url or "",
        secret=_secret(args),
        image_dir=args.image_dir or "",
    )
    # Fail early, with the store's message, before forking workers (and without holding the store here).
    if args.clixon_socket:
        open_store(args, read_only=True).close()
    else:
        from .stores.embedded import check_datastore

        check_datastore(args.datastore or "pnp-datastore.xml")
    log.info(
        "pnp-service %s serving %s on %s:%d",
        __version__,
        f"Clixon controller at {args.clixon_socket}" if args.clixon_socket else f"datastore {os.path.abspath(args.datastore or 'pnp-datastore.xml')}",
        args.host,
        args.port,
    )
    if args.tls_cert:
        log.info("HTTPS with certificate %s; devices need DHCP option 43 with K5 (pnp-service option43 --https)", args.tls_cert)

    def make_app():
        from .app import create_app

        return create_app(open_store(args), settings)

    if args.dev:
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        make_app().run(host=args.host, port=args.port, threaded=True, ssl_context=tls)
        return 0
    from .serving import run_gunicorn

    return run_gunicorn(make_app, args)


# ---------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    store = open_store(args, create=False, read_only=True)
    snapshot = store.snapshot()
    store.close()
    rows = [("SERIAL", "STATE", "STEP", "ATTEMPTS", "LAST-CONTACT", "ADDRESS", "LAST-ERROR")]
    for record in snapshot.devices:
        status = record.status
        if status is None:
            state = "planned" if record.work else "declared"
            rows.append((record.serial, state, "", "", "", "", ""))
            continue
        error = f"{status.error_code}: {status.error_message}" if status.error_code else ""
        step = status.step + (f" ({status.phase})" if status.phase else "")
        rows.append(
            (record.serial, status.state, step, str(status.attempts), format_time(status.last_contact), status.address, error)
        )
    for entry in snapshot.unclaimed:
        rows.append((entry.serial, "unclaimed", entry.pid, "", format_time(entry.last_seen), entry.address, ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    for problem in snapshot.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- reset


def cmd_reset(args: argparse.Namespace) -> int:
    from .stores.embedded import EmbeddedStore

    store = EmbeddedStore(args.datastore or "pnp-datastore.xml", create=False)
    for serial in args.serial:
        if store.reset(serial):
            print(f"{serial}: status cleared; the device starts over at its next poll")
        else:
            print(f"{serial}: no status recorded", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- agent


def cmd_agent(args: argparse.Namespace) -> int:
    from .simulator import AgentSimulator, SimulatedDevice, simulated_fleet

    common = dict(
        pid=args.pid,
        version=args.version,
        fail_service=args.fail_service or "",
        fault_service=args.fault_service or "",
        auth_required=args.auth_required,
    )
    devices = [SimulatedDevice(serial=serial, hostname="Switch", **common) for serial in args.serial]
    if args.count:
        devices += simulated_fleet(args.serial_prefix, args.count, **common)
    if not devices:
        print("agent: give --serial SN (repeatable) or --count N", file=sys.stderr)
        return 2
    simulator = AgentSimulator(
        args.url,
        max_polls=args.max_polls,
        max_wait=args.max_wait,
        time_scale=args.time_scale,
        verify_tls=not args.insecure,
    )
    failures = 0
    for result in simulator.run_many(devices, args.concurrency):
        print(f"{result.serial}: {result.outcome} after {result.polls} polls ({result.reason}) [{' '.join(result.trace)}]")
        failures += result.outcome in ("http-error", "max-polls")
    return 1 if failures else 0


# ---------------------------------------------------------------------------- option43


def cmd_option43(args: argparse.Namespace) -> int:
    from .discovery import option43

    print(option43(args.server, port=args.port, https=args.https, debug=args.debug))
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pnp-service",
        description="Day-0 provisioning of Cisco devices over PnP, driven by a YANG controller or an XML file.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the PnP listener", description="Run the PnP HTTP listener.")
    _add_store_arguments(serve)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    serve.add_argument("--public-url", help="base URL devices reach this listener at, for download URLs "
                       "(default: the URL each device called)")
    serve.add_argument("--secret-file", help="file with the shared secret that signs download URLs "
                       "(default: DATASTORE.secret, created on first start)")
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); needs --tls-key")
    serve.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    serve.add_argument("--image-dir", help="folder of image files served to devices whose image/url is a bare file name")
    serve.add_argument("--journal", default="pnp-service.journal",
                       help="with --clixon-socket: where writes wait while the controller is busy or down")
    serve.add_argument("--max-attempts", type=int, default=3, help="tries of a failing step before error (default: 3)")
    serve.add_argument("--retry-seconds", type=int, default=30,
                       help="first retry backoff; doubles with each failure (default: 30)")
    serve.add_argument("--max-body", type=int, default=256 * 1024, help="largest request body in bytes (default: 262144)")
    serve.add_argument("--workers", type=int, default=1, help="gunicorn worker processes (default: 1)")
    serve.add_argument("--threads", type=int, default=8, help="threads per worker (default: 8)")
    serve.add_argument("--timeout", type=int, default=30, help="worker request timeout in seconds (default: 30)")
    serve.add_argument("--access-log", action="store_true",
                       help="also write gunicorn's access log (paths only, never download signatures)")
    serve.add_argument("--dev", action="store_true", help="use Flask's development server instead of gunicorn")
    serve.set_defaults(func=cmd_serve)

    status = commands.add_parser("status", help="print each device's state", description="Print a table of "
                                 "declared devices (state, step, attempts, last contact, last error) and unclaimed ones.")
    _add_store_arguments(status)
    status.set_defaults(func=cmd_status, journal=None)

    reset = commands.add_parser("reset", help="clear a device's status so it starts over",
                                description="Clear the status of devices in the embedded datastore (for a "
                                "controller: delete /pnp/device[serial]/status).")
    reset.add_argument("--datastore", metavar="FILE", help="embedded datastore file")
    reset.add_argument("serial", nargs="+")
    reset.set_defaults(func=cmd_reset)

    agent = commands.add_parser("agent", help="simulate PnP agents against a listener",
                                description="Simulate one or many IOS-XE PnP agents against a listener URL.")
    agent.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORT}", help="listener base URL (default: %(default)s)")
    agent.add_argument("--serial", action="append", default=[], help="serial of a simulated device (repeatable)")
    agent.add_argument("--count", type=int, default=0, help="also simulate N devices named PREFIX0001...")
    agent.add_argument("--serial-prefix", default="SIM", help="serial prefix with --count (default: %(default)s)")
    agent.add_argument("--pid", default="C9300-24P", help="product id the devices report (default: %(default)s)")
    agent.add_argument("--version", dest="version", default="17.3.1", help="running version (default: %(default)s)")
    agent.add_argument("--fail-service", help="a PnP service the devices always fail, e.g. config-upgrade")
    agent.add_argument("--fault-service", help="a PnP service the devices answer with a fault")
    agent.add_argument("--auth-required", action="store_true", help="report authRequired, to get credentials")
    agent.add_argument("--concurrency", type=int, default=10, help="devices run at once (default: %(default)s)")
    agent.add_argument("--max-polls", type=int, default=100, help="give up after N work requests (default: %(default)s)")
    agent.add_argument("--max-wait", type=float, default=60,
                       help="stop when told to back off longer than this many seconds (default: %(default)s)")
    agent.add_argument("--time-scale", type=float, default=1.0,
                       help="multiply every backoff by this (0 for no waiting; default: %(default)s)")
    agent.add_argument("--insecure", action="store_true", help="do not verify the listener's TLS certificate")
    agent.set_defaults(func=cmd_agent)

    option43 = commands.add_parser("option43", help="print the DHCP option 43 string for a listener",
                                   description="Print the DHCP option 43 string that points PnP agents at a listener.")
    option43.add_argument("server", help="listener IPv4 address or host name")
    option43.add_argument("--port", type=int, default=None, help="listener port (default: 80, or 443 with --https)")
    option43.add_argument("--https", action="store_true", help="devices use HTTPS (K5)")
    option43.add_argument("--debug", action="store_true", help="turn agent debug on (D instead of N)")
    option43.set_defaults(func=cmd_option43)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except StoreError as exc:
        print(f"pnp-service: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
