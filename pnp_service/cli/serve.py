"""``pnp-service serve``: check what can be checked before forking, then run the listener under gunicorn
(or Flask's development server); what it serves is built by :mod:`pnp_service.composition`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from .. import __version__, logs
from ..stores.base import StoreError

from .common import DEFAULT_PORT, JOURNAL_NAME, SECRET_NAME, UsageError, datastore_arguments, port_number, positive, warn_if_readable

log = logging.getLogger("pnp_service")


#: ``serve --server``: the event-driven worker (pnp_service.serving.EventWorker) or gunicorn's threaded one.
SERVER_MODELS = ("event", "threads")


#: The errors a check reports as they are, by the child's exit code (anything else: 2, and named by its type).
_CHECK_ERRORS: dict[int, type[Exception]] = {1: StoreError, 3: UsageError}


def _check_in_child(check) -> None:
    """Run ``check`` in a short-lived child process: the gunicorn master never holds what it loads."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            code = next((code for code, kind in _CHECK_ERRORS.items() if isinstance(exc, kind)), 2)
            os.write(write, (str(exc) if code != 2 else f"{type(exc).__name__}: {exc}").encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise _CHECK_ERRORS.get(code, StoreError)(message or "the store check failed")


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use (another listener?): choose another with --port")
            if exc.errno == errno.EACCES:
                raise UsageError(f"no permission to listen on port {port}: ports below 1024 need root "
                                 "(or CAP_NET_BIND_SERVICE); or choose a port above 1023 with --port")
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}")


def cmd_serve(args: argparse.Namespace) -> int:
    from .. import composition

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for path in filter(None, (args.tls_cert, args.tls_key)):
        if not os.path.isfile(path):
            raise UsageError(f"TLS file {path} not found")
    if args.write_through and not args.clixon_socket:
        raise UsageError("--write-through is for --clixon-socket: listeners on one embedded state database share it "
                         "already (docs/operations.md, Several listeners)")
    if args.image_dir and not os.path.isdir(args.image_dir):
        raise UsageError(f"--image-dir {args.image_dir} is not a folder")
    # Fail early, with the message of the store, the SUDI CA or the options, before forking workers.
    if args.dev:
        policy = composition.sudi_policy(args)
        composition.check_store(args, policy is not None)
        settings = composition.listener_settings(args, policy, composition.secret(args))
    else:
        _check_in_child(lambda: composition.check_serving(args))
        secret = composition.secret(args, warn=False)  # created by the check: every worker signs with it
    if not args.clixon_socket:
        warn_if_readable(args.datastore, "declarations with credentials and configurations")
    _check_port_free(args.host, args.port)
    args.ui_token = _ui_token(args) if args.ui else ""
    where = (f"Clixon controller at {args.clixon_socket}" if args.clixon_socket
             else f"declarations {os.path.abspath(args.datastore)}")
    scheme = "https" if args.tls_cert else "http"
    logs.event(log, logging.INFO, "serving", version=__version__, store=where, url=f"{scheme}://{args.host}:{args.port}",
               workers=args.workers, threads=args.threads)
    if args.clixon_socket and (args.write_through or args.workers > 1):
        log.info("write-through: each device is read from the controller before a decision and its status committed "
                 "before the answer, so any listener or worker can take its next message")
    if args.tls_cert:
        log.info("HTTPS with certificate %s; devices need DHCP option 43 with K5 (pnp-service option43 --https)", args.tls_cert)
    if args.dev:
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        composition.build_app(args, settings).run(host=args.host, port=args.port, threaded=True, ssl_context=tls)
        return 0

    def make_app():
        # In the worker, after the fork: the gunicorn master only watches workers, and keeps none of what the
        # listener loads (Flask, Jinja2, the store, cryptography for SUDI) in memory of its own.
        from ..app import served

        app = composition.build_app(args, composition.listener_settings(args, composition.sudi_policy(args), secret))
        if not args.ui:
            return served(app)
        return served(app, ui=composition.build_ui(args, app), ui_port=args.ui[1])

    from ..serving import run_gunicorn

    return run_gunicorn(make_app, args)


def ui_address(text: str) -> tuple[str, int]:
    """``--ui``: ``PORT`` (on 127.0.0.1), ``HOST:PORT`` or ``[V6]:PORT``."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, port_number(port)


def _ui_token(args: argparse.Namespace) -> str:
    """The roll-out page's token ("" without one); refused: a page others can reach without one, or on the PnP port."""
    host, port = args.ui
    if args.dev:
        raise UsageError("--ui needs serve's own server (not --dev)")
    if port == args.port:
        raise UsageError(f"--ui {port} is the PnP port: the roll-out page needs a port of its own")
    token = _read_ui_token(args.ui_token_file) if args.ui_token_file else ""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not token and not loopback:
        raise UsageError(f"--ui {host}:{port} is reachable from other hosts: give --ui-token-file FILE (a secret "
                         "of 16 characters or more), or bind the page to 127.0.0.1")
    _check_port_free(host, port)
    return token


def _read_ui_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise UsageError(f"--ui-token-file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise UsageError(f"--ui-token-file {path}: the token must be 16 characters or more")
    warn_if_readable(path, "the roll-out page's token")
    return token


def _ui_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--ui", type=ui_address, metavar="[HOST:]PORT",
                       help="also serve the roll-out page (docs/operations.md) on this address of its own, 127.0.0.1 "
                       "unless a HOST is given; never on the PnP port")
    serve.add_argument("--ui-token-file", metavar="FILE", help="with --ui on an address others can reach: a file "
                       "holding the page's token (open /?token=TOKEN once, or send Authorization: Bearer TOKEN)")


def _connection_arguments(serve: argparse.ArgumentParser) -> None:
    connections = serve.add_argument_group("connections", "How the listener treats slow, idle and numerous clients "
                                           "(docs/operations.md)")
    connections.add_argument("--server", choices=SERVER_MODELS, default="event",
                             help="event: one event loop per worker, a client costs a socket, never a thread "
                             "(default); threads: gunicorn's threaded worker, where a slow client holds a thread "
                             "(for comparison, or behind a proxy that buffers whole requests)")
    connections.add_argument("--request-timeout", type=positive, default=30, metavar="SECONDS",
                             help="a client must send a whole request (headers and body) within this; else the "
                             "connection is closed (default: %(default)s)")
    connections.add_argument("--keepalive-timeout", type=positive, default=15, metavar="SECONDS",
                             help="an idle keep-alive connection is closed after this (default: %(default)s)")
    connections.add_argument("--send-timeout", type=positive, default=60, metavar="SECONDS",
                             help="a client that takes no byte of an answer or a download for this long is "
                             "disconnected; a slow download that keeps moving is never cut (default: %(default)s)")
    connections.add_argument("--max-connections", type=positive, default=4096, metavar="N",
                             help="open connections per worker; beyond, the longest idle one is closed to make room "
                             "(default: %(default)s)")
    connections.add_argument("--workers", type=positive, default=1, help="gunicorn worker processes (default: 1)")
    connections.add_argument("--threads", type=positive, default=8,
                             help="threads per worker that run complete requests (default: 8)")
    connections.add_argument("--timeout", type=positive, default=30, metavar="SECONDS",
                             help="gunicorn restarts a worker that is stuck this long (default: %(default)s)")
    connections.add_argument("--graceful-timeout", type=positive, default=30, metavar="SECONDS",
                             help="on SIGTERM, answers and downloads in flight get this long to finish (default: "
                             "%(default)s)")
    connections.add_argument("--access-log", action="store_true",
                             help="also write an access log line per request (paths only, never download signatures)")


def add_parsers(command) -> None:
    """Add this module's commands; ``command(name, help, description)`` makes each subparser."""
    serve = command("serve", "run the PnP listener", "Run the PnP HTTP listener.")
    datastore_arguments(serve)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    serve.add_argument("--public-url", help="base URL devices reach this listener at, for download URLs "
                       "(default: the URL each device called)")
    serve.add_argument("--secret-file", help="file with the secret that signs download URLs, shared by every "
                       "listener of one deployment (default: DATASTORE.secret; with --clixon-socket "
                       f"{SECRET_NAME} in --state-dir; created on first start, mode 0600)")
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); needs --tls-key")
    serve.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    _ui_arguments(serve)
    serve.add_argument("--image-dir", help="folder of image files served to devices whose image/url is a bare file name")
    serve.add_argument("--known-hosts", default="~/.ssh/known_hosts", metavar="FILE",
                       help="with --clixon-socket: the known_hosts of the user the controller's backend runs as, where "
                       "host keys read over PnP are pinned (default: %(default)s)")
    serve.add_argument("--on-provisioned", metavar="CMD", help="without a controller: run CMD once per provisioned "
                       "device and revision, the device's facts as JSON on its stdin")
    serve.add_argument("--webhook", metavar="URL", help="without a controller: POST the same JSON to URL (retried)")
    serve.add_argument("--controller-ssh-key", metavar="FILE", help="an SSH public key (id_*.pub) templates get as "
                       "controller_ssh_key, controller_ssh_key_lines... (under a controller: PNP_CONTROLLER_SSH_KEY "
                       "in the service module's environment)")
    serve.add_argument("--sudi-ca", metavar="FILE", help="PEM bundle of the CA certificates that issue SUDI "
                       "certificates (Cisco's roots and SUDI sub-CAs, docs/security.md); needed by declarations with "
                       "authentication sudi")
    serve.add_argument("--trustpool", metavar="CA.pem", help="HTTPS from day 0: devices that call over HTTP first "
                       "install this CA bundle (the one that signed the HTTPS listener's certificate) into their "
                       "trustpool, then reconnect to --https-url")
    serve.add_argument("--https-url", metavar="URL", help="with --trustpool: the HTTPS listener devices reconnect to, "
                       "e.g. https://pnp.example.net:8443")
    serve.add_argument("--ntp", metavar="ADDR", help="with --trustpool: NTP server the device sets its clock from first "
                       "(certificates need the right time)")
    serve.add_argument("--state-dir", metavar="DIR",
                       help="with --clixon-socket: where the journal and the URL secret are kept (default: "
                       "/var/lib/pnp-service as root, else ~/.local/state/pnp-service; created mode 0700)")
    serve.add_argument("--journal", metavar="FILE",
                       help=f"with --clixon-socket: where writes wait while the controller is busy or down "
                       f"(default: {JOURNAL_NAME} in --state-dir)")
    serve.add_argument("--write-through", action="store_true",
                       help="with --clixon-socket: this listener is one of several that a load balancer may hand any "
                       "message of a device; read each device from the controller before deciding and commit its "
                       "status before answering (a controller round trip per step; on by itself with --workers > 1; "
                       "docs/operations.md, Several listeners)")
    serve.add_argument("--max-attempts", type=positive, default=3, help="tries of a failing step before error (default: 3)")
    serve.add_argument("--retry-seconds", type=positive, default=30,
                       help="first retry backoff; doubles with each failure (default: 30)")
    serve.add_argument("--max-body", type=positive, default=256 * 1024,
                       help="largest request body in bytes (default: 262144)")
    serve.add_argument("--max-image-transfers", type=positive, default=64, metavar="N",
                       help="devices pulling an image from this listener at once, per worker; the others are told to "
                       "back off and try again (default: %(default)s)")
    serve.add_argument("--max-unclaimed", type=positive, default=10_000, metavar="N",
                       help="unclaimed devices kept; beyond, the longest unseen is forgotten (default: %(default)s)")
    serve.add_argument("--unclaimed-days", type=positive, default=7, metavar="DAYS",
                       help="an unclaimed device not seen for this long is forgotten (default: %(default)s)")
    _connection_arguments(serve)
    serve.add_argument("--dev", action="store_true", help="use Flask's development server instead of gunicorn")
    serve.set_defaults(func=cmd_serve)
