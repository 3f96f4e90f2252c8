"""The composition root: what a listener is made of, built in one place from the command line's options.

Owns turning ``serve``'s options into the listener's settings (:func:`listener_settings`), and building a worker's
application from them (:func:`build_app`): the store, the hand-off worker (to the controller, or to the hooks),
the listener and the Flask application.  ``serve`` checks and forks; gunicorn's workers (event loop or threads)
and Flask's development server each call :func:`build_app`; nothing else wires these together.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Callable

from .cli.common import SECRET_NAME, UsageError, open_store, state_file, timeline_file, warn_if_readable
from .stores.base import Store, StoreError

if TYPE_CHECKING:
    from flask import Flask

    from .handoff import HandoffWorker
    from .summary import SummaryWriter
    from .listener import ListenerSettings
    from .model import Step
    from .sudi import Policy

log = logging.getLogger("pnp_service")


def listener_settings(args: argparse.Namespace, policy: Policy | None, secret: bytes) -> ListenerSettings:
    """``serve``'s options as the listener's settings, with the secret that signs download URLs (:func:`secret`)."""
    from .listener import ListenerSettings
    from .provisioner import Settings

    return ListenerSettings(
        provisioning=Settings(max_attempts=args.max_attempts, retry_base_seconds=args.retry_seconds,
                              https_bootstrap=https_bootstrap(args), sudi=policy,
                              hooks=bool(not args.clixon_socket and (args.on_provisioned or args.webhook))),
        max_body_bytes=args.max_body,
        public_url=args.public_url or "",
        secret=secret,
        image_dir=args.image_dir or "",
        max_image_transfers=args.max_image_transfers,
    )


def build_app(args: argparse.Namespace, settings: ListenerSettings) -> Flask:
    """One worker's application: its store, its hand-off worker, its listener."""
    from .app import create_app
    from .listener import Listener

    from .timeline import TimelineDb, TimelineWriter

    store = open_store(args)
    timeline = TimelineWriter(TimelineDb(timeline_file(args)))
    worker = handoff_worker(args, store, note=timeline.note)
    summary_writer(args, store)
    listener = Listener(store, settings, on_provisioned=worker.notify if worker else None, timeline=timeline)
    return create_app(store, settings, listener=listener)


def build_ui(args: argparse.Namespace, app: Flask) -> Flask:
    """The roll-out page of one worker, over its listener's store and timeline."""
    from .ui import create_ui

    listener = app.extensions["pnp_listener"]
    if args.clixon_socket:  # one line of clixon_cli: the listener declares the device (docs/controller.md)
        claim = "pnp claim {serial} hostname NAME template-file FILE"
    else:
        claim = (f"pnp-service claim {{serial}} --datastore {args.datastore} --groups groups.yaml --group GROUP "
                 f"--hostname NAME --output {args.datastore} --merge")
    return create_ui(listener.store, listener.timeline.db if listener.timeline else None, args.ui_token, claim)


def check_serving(args: argparse.Namespace) -> None:
    """What ``serve`` checks before it forks its workers: the SUDI CA, the store, the listener's settings (the
    secret is created here when there is none).  It runs in a child process, so the master keeps none of it."""
    policy = sudi_policy(args)
    check_store(args, policy is not None)
    listener_settings(args, policy, secret(args))


def secret(args: argparse.Namespace, warn: bool = True) -> bytes:
    from .downloads import load_or_create_secret

    path = args.secret_file
    if not path:
        path = state_file(args, None, SECRET_NAME) if args.clixon_socket else args.datastore + ".secret"
    try:
        secret = load_or_create_secret(path)
    except OSError as exc:
        raise StoreError(f"secret file {path}: {exc.strerror} (choose one with --secret-file)") from None
    if warn:
        warn_if_readable(path, "the secret that signs download URLs")
    return secret


def sudi_policy(args: argparse.Namespace) -> Policy | None:
    """``--sudi-ca FILE``: the CA certificates SUDI certificates must chain to."""
    if not getattr(args, "sudi_ca", None):
        return None
    from . import sudi

    try:
        with open(args.sudi_ca, "rb") as handle:
            anchors = sudi.load_ca_bundle(handle.read(), f"--sudi-ca {args.sudi_ca}")
    except OSError as exc:
        raise UsageError(f"--sudi-ca {args.sudi_ca}: {exc.strerror}") from None
    except sudi.SudiError as exc:
        raise UsageError(str(exc)) from None
    return sudi.Policy(anchors=anchors)


def needing_sudi(declarations) -> list[str]:
    return sorted(serial for serial, declaration in declarations.items() if declaration.authentication == "sudi")


def check_store(args: argparse.Namespace, has_sudi_ca: bool) -> None:
    """Open the store read-only; declarations that ask for SUDI while the listener has no CA are named."""
    store = open_store(args, read_only=True)
    try:
        declared = {r.serial: r.declaration for r in store.snapshot().devices if r.declaration is not None}
    finally:
        store.close()
    needing = needing_sudi(declared)
    if needing and not has_sudi_ca:
        message = (f"{len(needing)} declarations ask for SUDI authentication ({', '.join(needing[:5])}"
                   f"{', ...' if len(needing) > 5 else ''}) but no --sudi-ca was given: they would never be served")
        if not args.clixon_socket:
            raise StoreError(message + "; give --sudi-ca FILE (docs/security.md)")
        log.error("%s; give --sudi-ca FILE (docs/security.md). Other devices are served.", message)


def handoff_worker(args: argparse.Namespace, store: Store,
                   note: Callable[[str, str, str], object] = lambda serial, what, detail: None) -> HandoffWorker | None:
    """Under a controller: hand provisioned devices to it; without one: the hooks, when given."""
    from .handoff import Action, HandoffWorker, HookAction

    action: Action
    if args.clixon_socket:
        from .stores.clixon.handoff import ControllerAction

        action = ControllerAction(args.clixon_socket, args.known_hosts)
    elif args.on_provisioned or args.webhook:
        action = HookAction(args.on_provisioned or "", args.webhook or "")
    else:
        return None
    worker = HandoffWorker(store, action, note=note)
    worker.start()
    return worker


def summary_writer(args: argparse.Namespace, store: Store) -> SummaryWriter | None:
    """Under a controller: keep ``/pnp/summary`` (what ``show pnp`` shows in its CLI) in step with the store."""
    if not args.clixon_socket:
        return None
    from .stores.clixon.netconf import RpcError, commit_edit, session
    from .summary import SummaryWriter

    def commit(edit: str) -> None:
        with session(args.clixon_socket) as opened:
            try:
                commit_edit(opened, edit)  # the candidate lock first: an operator's uncommitted edits are never published
            except RpcError as exc:
                raise StoreError(f"the controller did not take it: {exc}") from None

    return SummaryWriter(store.snapshot, commit).start()


def https_bootstrap(args: argparse.Namespace) -> Step | None:
    """``--trustpool CA --https-url URL [--ntp ADDR]``: what the trustpool step sends every device over HTTP."""
    from urllib.parse import urlsplit

    from .steps import TrustpoolStep

    if not args.trustpool:
        if args.https_url or args.ntp:
            raise UsageError("--https-url and --ntp go with --trustpool (the CA bundle devices install)")
        return None
    try:
        with open(args.trustpool, encoding="ascii") as handle:
            bundle = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--trustpool {args.trustpool}: {getattr(exc, 'strerror', None) or exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in bundle:
        raise UsageError(f"--trustpool {args.trustpool} holds no PEM certificate")
    url = urlsplit(args.https_url or "")
    if url.scheme != "https" or not url.hostname:
        raise UsageError("--trustpool needs --https-url https://HOST[:PORT], the listener devices reconnect to")
    return TrustpoolStep.plan(bundle, url.hostname, url.port or 443, ntp=args.ntp or "")
