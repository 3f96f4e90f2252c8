"""Serving the Flask app under gunicorn, from the command line.

gunicorn is the process manager (a master that forks workers, restarts a worker
that dies or hangs, reopens logs on SIGUSR1); the worker class is ours by
default: :class:`EventWorker` runs :mod:`pnp_service.httpserver`, where a client
costs a socket and not a thread, every read has a deadline and downloads go out
with sendfile.  ``serve --server threads`` picks gunicorn's threaded worker
instead (a thread per connection being read): only for comparison, or behind a
proxy that buffers whole requests.  docs/operations.md says why.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import os
import signal
from typing import Any, Callable

from gunicorn.workers.base import Worker

from . import logs
from .httpserver import Application, Limits, Server, raise_open_files_limit


class EventWorker(Worker):
    """A gunicorn worker that serves with :class:`pnp_service.httpserver.Server` (one event loop, a few app threads).

    ``pnp-service serve`` sets :attr:`limits` from its options before gunicorn forks; gunicorn's own settings give
    the threads, the connection cap (``worker_connections``) and the graceful timeout.  Usable on its own too:
    ``gunicorn -k pnp_service.serving.EventWorker``.
    """

    limits = Limits()
    access_log = False

    def init_signals(self) -> None:
        # The event loop installs its handlers in run(); gunicorn's would interrupt it from inside.
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # The master's signals, sent to a worker by hand, must not kill it mid-download.
        for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_IGN)

    def run(self) -> None:
        limits = dataclasses.replace(self.limits, threads=self.cfg.threads, max_connections=self.cfg.worker_connections,
                                     graceful_timeout=self.cfg.graceful_timeout)
        raise_open_files_limit(2 * limits.max_connections + 256)  # a download holds its socket and its file
        asyncio.run(self._serve(limits))

    async def _serve(self, limits: Limits) -> None:
        from gunicorn.sock import ssl_context

        loop = asyncio.get_running_loop()
        server = Server(self.wsgi, limits, ssl_context(self.cfg) if self.cfg.is_ssl else None, self.access_log)

        def stop() -> None:
            self.alive = False
            server.stop()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        try:
            await server.serve([listener.sock for listener in self.sockets])
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, stop: Callable[[], None]) -> None:
        """Tell the master this worker lives (a blocked loop gets it restarted); stop when the master is gone."""
        while self.alive:
            self.notify()
            if os.getppid() != self.ppid:
                self.log.info("Parent changed, shutting down: %s", self)
                stop()
                return
            await asyncio.sleep(min(1.0, max(0.1, self.timeout / 4)))


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(request_timeout=args.request_timeout, keepalive_timeout=args.keepalive_timeout,
                  send_timeout=args.send_timeout, max_connections=args.max_connections, max_body_bytes=args.max_body,
                  threads=args.threads)


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
#: Arenas a listener's process keeps.  glibc gives each thread that meets contention an arena of its own (up to eight
#: per core) and never hands memory freed in one to another: a worker's decision, flush, refresh and image threads
#: each kept the high-water mark of their own transients (a 10,000-device refresh, a status commit).  Two arenas cut
#: the peak resident memory of a listener on a Clixon store at 10,000 declared by a tenth (docs/benchmark.md).
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process and the workers it forks (before any thread starts); the user's
    own ``MALLOC_ARENA_MAX`` wins.  False where there is nothing to do (another C library, or the user chose)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no arenas to cap), or no C library to ask
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def run_gunicorn(make_app: Callable[[], Application], args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    limit_malloc_arenas()

    limits = limits_from(args)
    worker_class: type | str = "gthread"
    if args.server == "event":
        worker_class = type("PnpEventWorker", (EventWorker,), {"limits": limits, "access_log": args.access_log})
    options = {
        "bind": [_bind(args.host, args.port)] + ([_bind(*args.ui)] if getattr(args, "ui", None) else []),
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": worker_class,
        "worker_connections": limits.max_connections,
        # The master restarts a worker whose event loop (or, with threads, whose request) blocks this long.
        "timeout": args.timeout,
        # On SIGTERM: answers and downloads in flight get this long (a cut download costs its device an attempt).
        "graceful_timeout": args.graceful_timeout,
        "keepalive": int(limits.keepalive_timeout),
        # Headers are small in PnP; keep the request line and header limits tight.
        "limit_request_line": 4094,
        "limit_request_fields": 50,
        # Every PnP request already gets a structured line (serial=... event=...); the access log is extra.
        "accesslog": "-" if args.access_log and args.server == "threads" else None,
        # The path only: download URLs carry their signature in the query, which must not land in logs.
        "access_log_format": '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
        "errorlog": "-",
        "loglevel": args.log_level,
        # One format for gunicorn's lines and ours.
        "logconfig_dict": logs.gunicorn_config(args.log_level, args.log_format, args.access_log),
        "worker_exit": _worker_exit,
    }
    if args.tls_cert:
        options.update(certfile=args.tls_cert, keyfile=args.tls_key)

    class PnpApplication(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)
            # Two listeners run by one user must not share (and remove) one control socket.
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Application:
            # Each worker builds its own app and store after the fork.
            return make_app()

    PnpApplication().run()
    return 0


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker_exit(arbiter: Any, worker: Any) -> None:
    """A worker that stops writes what it holds behind its answers (strangers' sightings) before it goes."""
    close = getattr(getattr(worker, "wsgi", None), "close", None)
    if close is not None:
        close()
