"""Serving the Flask app under gunicorn (threads by default), from the command line."""

from __future__ import annotations

import argparse
from typing import Callable

from flask import Flask

from . import logs


def run_gunicorn(make_app: Callable[[], Flask], args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    options = {
        "bind": f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}",
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread",
        "timeout": args.timeout,
        "graceful_timeout": 10,
        "keepalive": 5,
        # Headers are small in PnP; keep the request line and header limits tight.
        "limit_request_line": 4094,
        "limit_request_fields": 50,
        # Every PnP request already gets a structured line (serial=... event=...); the access log is extra.
        "accesslog": "-" if args.access_log else None,
        # The path only: download URLs carry their signature in the query, which must not land in logs.
        "access_log_format": '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
        "errorlog": "-",
        "loglevel": args.log_level,
        # One format for gunicorn's lines and ours.
        "logconfig_dict": logs.gunicorn_config(args.log_level, args.log_format, args.access_log),
    }
    if args.tls_cert:
        options.update(certfile=args.tls_cert, keyfile=args.tls_key)

    class PnpApplication(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            # Each worker builds its own app and store after the fork.
            return make_app()

    PnpApplication().run()
    return 0
