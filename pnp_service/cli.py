"""The ``pnp-service`` command line: serve, init, check, render, status, reset, import, claim, agent, option43.

Owns argument parsing, logging set-up, choosing a store, and turning every
expected failure into one line that says what to fix (exit status 1, or 2 for
a bad command line); everything else is called from the layers below.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import stat
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Sequence

from . import __version__, logs
from .stores.base import Store, StoreError

if TYPE_CHECKING:
    from .model import Step

log = logging.getLogger("pnp_service")

DEFAULT_PORT = 8080
DEFAULT_DATASTORE = "pnp-datastore.xml"
JOURNAL_NAME = "pnp-service.journal"
SECRET_NAME = "url-signing.secret"


def default_state_dir() -> str:
    """Where a listener on a controller keeps its journal and URL secret: /var/lib/pnp-service as root (the
    systemd unit's StateDirectory), else $XDG_STATE_HOME/pnp-service (~/.local/state/pnp-service)."""
    if os.geteuid() == 0:
        return "/var/lib/pnp-service"
    return os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "pnp-service")


def _state_file(args: argparse.Namespace, given: str | None, name: str) -> str:
    """``given``, else ``name`` in --state-dir (created private)."""
    if given:
        return given
    folder = getattr(args, "state_dir", None) or default_state_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"state folder {folder}: {exc.strerror} (choose one with --state-dir)") from None
    return os.path.join(folder, name)
#: ``serve --server``: the event-driven worker (pnp_service.serving.EventWorker) or gunicorn's threaded one.
SERVER_MODELS = ("event", "threads")


class UsageError(Exception):
    """A command line that cannot work; the message says what to change."""


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


# ---------------------------------------------------------------------------- stores


def _registry():
    from .steps import StepRegistryError, default_registry

    try:
        return default_registry()
    except StepRegistryError as exc:
        raise StoreError(str(exc)) from None


def open_store(args: argparse.Namespace, *, read_only: bool = False, tolerate_invalid: bool = False) -> Store:
    from .stores.base import UnclaimedPolicy

    policy = UnclaimedPolicy(getattr(args, "max_unclaimed", None) or UnclaimedPolicy.max_entries,
                             getattr(args, "unclaimed_days", None) or UnclaimedPolicy.keep_days)
    if getattr(args, "clixon_socket", None):
        from .stores.clixon import ClixonStore  # imports clixon-pyapi: only on demand

        journal = None if read_only else _state_file(args, getattr(args, "journal", None), JOURNAL_NAME)
        return ClixonStore(args.clixon_socket, journal_path=journal, read_only=read_only, unclaimed_policy=policy)
    from .stores.embedded import EmbeddedStore

    return EmbeddedStore(args.datastore, getattr(args, "state", None), read_only=read_only,
                         known_step_types=_registry().names(), context=_template_context(args), unclaimed_policy=policy,
                         tolerate_invalid=tolerate_invalid)


def _template_context(args: argparse.Namespace) -> dict[str, object]:
    """``--controller-ssh-key FILE``: the controller's public key, as template variables."""
    path = getattr(args, "controller_ssh_key", None)
    if not path:
        return {}
    from .planner import PlanningError, controller_variables

    try:
        with open(path, encoding="ascii") as handle:
            return controller_variables(handle.read().strip())
    except OSError as exc:
        raise UsageError(f"--controller-ssh-key {path}: {exc.strerror}") from None
    except PlanningError as exc:
        raise UsageError(f"--controller-ssh-key {path}: {exc}") from None


def _readable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def _warn_if_readable(path: str, what: str) -> None:
    if _readable_by_others(path):
        logs.event(log, logging.WARNING, "file-readable-by-others", file=os.path.abspath(path), holds=what,
                   fix=f"chmod 600 {path}")


def _secret(args: argparse.Namespace) -> bytes:
    from .downloads import load_or_create_secret

    path = args.secret_file
    if not path:
        path = _state_file(args, None, SECRET_NAME) if args.clixon_socket else args.datastore + ".secret"
    try:
        secret = load_or_create_secret(path)
    except OSError as exc:
        raise StoreError(f"secret file {path}: {exc.strerror} (choose one with --secret-file)") from None
    _warn_if_readable(path, "the secret that signs download URLs")
    return secret


def _check_in_child(check) -> None:
    """Run ``check`` in a short-lived child process: the gunicorn master never holds what it loads."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            check()
        except StoreError as exc:
            os.write(write, str(exc).encode())
            code = 1
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
            code = 2
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise StoreError(message or "the store check failed")


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


# ---------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from .listener import ListenerSettings
    from .provisioner import Settings

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for path in filter(None, (args.tls_cert, args.tls_key)):
        if not os.path.isfile(path):
            raise UsageError(f"TLS file {path} not found")
    if args.image_dir and not os.path.isdir(args.image_dir):
        raise UsageError(f"--image-dir {args.image_dir} is not a folder")
    policy = _sudi_policy(args)
    # Fail early, with the store's message, before forking workers.
    if args.dev:
        _check_store(args, policy is not None)
    else:
        _check_in_child(lambda: _check_store(args, policy is not None))
    settings = ListenerSettings(
        provisioning=Settings(max_attempts=args.max_attempts, retry_base_seconds=args.retry_seconds,
                              https_bootstrap=_https_bootstrap(args), sudi=policy,
                              hooks=bool(not args.clixon_socket and (args.on_provisioned or args.webhook))),
        max_body_bytes=args.max_body,
        public_url=args.public_url or "",
        secret=_secret(args),
        image_dir=args.image_dir or "",
        max_image_transfers=args.max_image_transfers,
    )
    if not args.clixon_socket:
        _warn_if_readable(args.datastore, "declarations with credentials and configurations")
    _check_port_free(args.host, args.port)
    where = (f"Clixon controller at {args.clixon_socket}" if args.clixon_socket
             else f"declarations {os.path.abspath(args.datastore)}")
    scheme = "https" if args.tls_cert else "http"
    logs.event(log, logging.INFO, "serving", version=__version__, store=where, url=f"{scheme}://{args.host}:{args.port}",
               workers=args.workers, threads=args.threads)
    if args.tls_cert:
        log.info("HTTPS with certificate %s; devices need DHCP option 43 with K5 (pnp-service option43 --https)", args.tls_cert)

    def make_flask():
        from .app import create_app
        from .listener import Listener

        store = open_store(args)
        worker = _handoff_worker(args, store)
        listener = Listener(store, settings, on_provisioned=worker.notify if worker else None)
        return create_app(store, settings, listener=listener)

    if args.dev:
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        make_flask().run(host=args.host, port=args.port, threaded=True, ssl_context=tls)
        return 0

    def make_app():
        from .app import served

        return served(make_flask())

    from .serving import run_gunicorn

    return run_gunicorn(make_app, args)


def _sudi_policy(args: argparse.Namespace):
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


def _needing_sudi(declarations) -> list[str]:
    return sorted(serial for serial, declaration in declarations.items() if declaration.authentication == "sudi")


def _check_store(args: argparse.Namespace, has_sudi_ca: bool) -> None:
    """Open the store read-only; declarations that ask for SUDI while the listener has no CA are named."""
    store = open_store(args, read_only=True)
    try:
        declared = {r.serial: r.declaration for r in store.snapshot().devices if r.declaration is not None}
    finally:
        store.close()
    needing = _needing_sudi(declared)
    if needing and not has_sudi_ca:
        message = (f"{len(needing)} declarations ask for SUDI authentication ({', '.join(needing[:5])}"
                   f"{', ...' if len(needing) > 5 else ''}) but no --sudi-ca was given: they would never be served")
        if not args.clixon_socket:
            raise StoreError(message + "; give --sudi-ca FILE (docs/security.md)")
        log.error("%s; give --sudi-ca FILE (docs/security.md). Other devices are served.", message)


def _handoff_worker(args: argparse.Namespace, store: Store):
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
    worker = HandoffWorker(store, action)
    worker.start()
    return worker


def _https_bootstrap(args: argparse.Namespace) -> Step | None:
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


# ---------------------------------------------------------------------------- init, check, render


def cmd_init(args: argparse.Namespace) -> int:
    from .stores.embedded import write_example

    try:
        write_example(args.file)
    except FileExistsError:
        raise UsageError(f"{args.file} exists already; pnp-service never overwrites a declarations file") from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"wrote {args.file} (mode 0600): two example devices; edit it, then: pnp-service check --datastore {args.file}")
    return 0


def _declarations(args: argparse.Namespace):
    from .stores.embedded import Declarations, default_template_dirs
    from .validation import DeclarationsError

    try:
        return Declarations(args.datastore, default_template_dirs(args.datastore), _registry().names(),
                            announce=False, context=_template_context(args)).current()
    except DeclarationsError as exc:
        raise StoreError(str(exc)) from None


def cmd_check(args: argparse.Namespace) -> int:
    current = _declarations(args)
    problems = list(current.errors.values())
    if _sudi_policy(args) is None:
        problems += [f"pnp-device {serial}: asks for SUDI authentication but the listener has no --sudi-ca "
                     "(give check and serve --sudi-ca FILE)" for serial in _needing_sudi(current.declarations)]
    for message in problems:
        print(f"{args.datastore}: {message}", file=sys.stderr)
    ok = len(current.plans)
    print(f"{args.datastore}: {len(current.declarations)} devices declared, {ok} planned, {len(problems)} with errors")
    return 1 if problems else 0


def cmd_sudi_lab(args: argparse.Namespace) -> int:
    from .simulator.lab_pki import write_lab

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


# ---------------------------------------------------------------------------- status, reset


def cmd_status(args: argparse.Namespace) -> int:
    from . import views

    store = open_store(args, read_only=True, tolerate_invalid=True)
    try:
        while True:
            snapshot = store.snapshot()
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
    from .stores.base import UnknownSerial

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
            except UnknownSerial as exc:
                print(f"pnp-service reset: {exc}", file=sys.stderr)
                failed += 1
    finally:
        store.close()
    return 1 if failed else 0


# ---------------------------------------------------------------------------- import, claim


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a spreadsheet's byte-order mark is not a column name
            return handle.read()
    except FileNotFoundError:
        raise StoreError(f"{what} {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise StoreError(f"{what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise StoreError(f"{what} {path}: cannot read it: {exc.strerror}") from None


def write_private(path: str, data: bytes, *, exclusive: bool) -> None:
    """Write ``path`` whole or not at all, mode 0600: a private temporary file beside it, fsynced, then linked
    in place (``exclusive``: never over an existing file) or renamed over the old one, whose owner and group
    it keeps where it may (root merging into a file the service user reads)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        old = None if exclusive else os.stat(path)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.fchown(handle.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    pass  # not root: the file becomes ours, as any editor would leave it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(temporary, path)  # fails when the file appeared meanwhile
                os.unlink(temporary)
            except FileExistsError:
                raise UsageError(f"{path} exists already; --merge adds to it") from None
            except OSError:  # a file system without hard links: look, then rename
                if os.path.lexists(path):
                    raise UsageError(f"{path} exists already; --merge adds to it") from None
                os.replace(temporary, path)
        else:
            os.replace(temporary, path)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _check_output_flags(args: argparse.Namespace) -> None:
    if args.merge and not args.output:
        raise UsageError("--merge goes with --output FILE.xml (the declarations file to add to)")
    if args.replace and args.output and not args.merge:
        raise UsageError("--replace goes with --merge (replace serials the file declares), --clixon-cli or --netconf")


def _template_dirs(args: argparse.Namespace, beside: str) -> list[str]:
    """Where ``config/template-file`` names are checked: --template-dir; for a controller (--clixon-cli,
    --netconf, --clixon-socket) where its service module reads them ($PNP_TEMPLATE_DIRS, else
    /usr/local/share/pnp-service/templates: a file beside the list would pass here and fail the commit); else
    templates/ beside the output file (where ``serve`` will look), or beside ``beside``."""
    from .planner import controller_template_dirs

    if args.template_dir:
        return list(args.template_dir)
    if args.clixon_cli or args.netconf or getattr(args, "clixon_socket", None):
        return controller_template_dirs(os.environ)
    return [os.path.join(os.path.dirname(os.path.abspath(args.output or beside)), "templates")]


def _deliver(args: argparse.Namespace, imported, what: str, origin: str) -> int:
    """Hand the checked declarations out the way the flags ask; none of them: only the summary (claim: the XML).

    ``what`` names the input in messages, ``origin`` the command in the comment heading a written file or script.
    """
    from . import importer

    declarations = [item.declaration for item in imported]
    count = f"{len(declarations)} device{'s' if len(declarations) != 1 else ''}"
    # An XML comment cannot hold "--": say the option's name without its dashes.
    comment = (f"Written by {origin}: {count}.  Check it after every edit: pnp-service check, with this file "
               "as its datastore." if args.output else
               f"{origin}: {count}.  Review, then paste into clixon_cli (or clixon_cli -f CONFIG < THIS-FILE).")
    if args.output:
        if os.path.lexists(args.output):
            if not args.merge:
                raise UsageError(f"{args.output} exists already: --merge adds to it (and --replace replaces the "
                                 "serials it declares); pnp-service never overwrites a declarations file otherwise")
            with open(args.output, "rb") as handle:
                existing = handle.read()
            merged = importer.merge_into(existing, args.output, imported, replace=args.replace)
            if merged.added or merged.replaced:
                write_private(args.output, merged.data, exclusive=False)
            kept = (f", {len(merged.kept)} already declared and kept as they are (--replace replaces them: "
                    f"{' '.join(merged.kept[:5])}{' ...' if len(merged.kept) > 5 else ''})") if merged.kept else ""
            state = "merged into" if merged.added or merged.replaced else "nothing to change in"
            print(f"{state} {args.output}: {len(merged.added)} added, {len(merged.replaced)} replaced{kept}")
            return 0
        if args.merge:
            raise UsageError(f"--merge: {args.output} does not exist (leave out --merge to create it)")
        write_private(args.output, importer.declarations_document(declarations, comment), exclusive=True)
        print(f"wrote {args.output} (mode 0600): {count} from {what}; serve it: "
              f"pnp-service serve --datastore {args.output}")
        return 0
    if args.clixon_cli:
        sys.stdout.write(importer.clixon_cli_script(imported, replace=args.replace, comment=comment,
                                                    commit_every=args.commit_every))
        print(f"pnp-service {args.command}: {count} from {what}, as a clixon_cli script: review it, then paste it "
              "into clixon_cli (or clixon_cli -f CONFIG < FILE)", file=sys.stderr)
        return 0
    if args.netconf:
        sys.stdout.write(importer.netconf_config(declarations, replace=args.replace))
        print(f"pnp-service {args.command}: {count} from {what}, as the <config> of an edit-config on the candidate; "
              "commit after it", file=sys.stderr)
        return 0
    if args.command == "claim":
        sys.stdout.write(importer.declarations_fragment(declarations))
        print(f"pnp-service claim: {count}; add them under <services> in your declarations file "
              "(or give --output FILE --merge, or --clixon-cli)", file=sys.stderr)
        return 0
    print(f"{what}: {count}, valid and planned; nothing written "
          "(--output FILE.xml writes a declarations file, --clixon-cli or --netconf prints them for a controller)")
    return 0


def _failed(args: argparse.Namespace, exc) -> int:
    for line in exc.lines():
        print(f"pnp-service {args.command}: {line}", file=sys.stderr)
    problems = len(exc.problems)
    print(f"pnp-service {args.command}: nothing written ({problems} problem{'s' if problems != 1 else ''})",
          file=sys.stderr)
    return 1


def cmd_import(args: argparse.Namespace) -> int:
    from . import importer
    from .planner import file_template_loader

    _check_output_flags(args)
    kind = args.format or {".csv": "csv", ".yaml": "yaml", ".yml": "yaml"}.get(os.path.splitext(args.file)[1].lower())
    if kind is None:
        raise UsageError(f"{args.file}: is it CSV or YAML? name it .csv, .yaml or .yml, or give --format")
    try:
        groups = importer.load_groups(_read_text(args.groups, "groups file"), args.groups) if args.groups else None
        text = _read_text(args.file, "device list")
        read = importer.devices_from_csv if kind == "csv" else importer.devices_from_yaml
        imported = read(text, args.file, groups)
        if not imported:
            raise importer.ImportFailed([importer.Problem(importer.Where(args.file), "no devices in it")])
        importer.verify(imported, args.file, file_template_loader(_template_dirs(args, args.file)), _registry().names(),
                        _template_context(args))
        return _deliver(args, imported, args.file, f"pnp-service import {os.path.basename(args.file)}")
    except importer.ImportFailed as exc:
        return _failed(args, exc)


def cmd_claim(args: argparse.Namespace) -> int:
    from . import importer
    from .planner import file_template_loader

    _check_output_flags(args)
    if args.group and not args.groups:
        raise UsageError("--group needs --groups FILE.yaml, the file that defines the groups")
    if args.hostname and len(args.serial) > 1:
        raise UsageError("--hostname names one device: claim one serial at a time with it")
    where = args.clixon_socket or args.datastore
    store = open_store(args, read_only=True)
    try:
        records = [store.load(serial) for serial in dict.fromkeys(args.serial)]
    finally:
        store.close()
    refused = []
    for record in records:
        if record.unclaimed is not None:
            continue
        if record.declaration is not None:
            refused.append(f"{record.serial} is declared already (in {where}), not unclaimed")
        else:
            refused.append(f"{record.serial} is not unclaimed: it has not called in without a declaration "
                           "(pnp-service status lists the unclaimed devices)")
    if refused:
        for message in refused:
            print(f"pnp-service claim: {message}", file=sys.stderr)
        return 1
    try:
        groups = importer.load_groups(_read_text(args.groups, "groups file"), args.groups) if args.groups else None
        imported = importer.claimed([r.unclaimed for r in records if r.unclaimed is not None], groups, args.group or (),
                                    args.hostname or "", args.template_file or "", args.var)
        beside = where if not args.clixon_socket else os.path.join(os.getcwd(), "claim")
        importer.verify(imported, "claim", file_template_loader(_template_dirs(args, beside)), _registry().names(),
                        _template_context(args))
        serials = " ".join(r.serial for r in records)
        return _deliver(args, imported, f"claim {serials}", f"pnp-service claim {serials}")
    except importer.ImportFailed as exc:
        return _failed(args, exc)


# ---------------------------------------------------------------------------- agent, option43


def device_spec(text: str) -> tuple[str, str]:
    """``SERIAL`` or ``SERIAL:PID``."""
    from .model import is_serial

    serial, _, pid = text.partition(":")
    if not is_serial(serial):
        raise argparse.ArgumentTypeError(f"{serial!r} is not a serial number (letters, digits, . _ -)")
    return serial, pid


def stack_spec(text: str) -> list[tuple[str, str]]:
    """``SERIAL[:PID],SERIAL[:PID],...``: a stack's switches in slot order, the first the active member."""
    members = [device_spec(part) for part in text.split(",") if part]
    if len(members) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a stack is two or more SERIAL[:PID], separated by commas")
    return members


def cmd_agent(args: argparse.Namespace) -> int:
    import threading
    from urllib.parse import urlsplit

    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--url {args.url}: give the listener's URL with its scheme, e.g. http://127.0.0.1:8080")

    from .simulator import AgentSimulator, SimulatedDevice, simulated_fleet

    sudi_files: dict[str, object] = {}
    for name in ("sudi_cert", "sudi_key"):
        path = getattr(args, name)
        if path:
            try:
                with open(path, "rb") as handle:
                    sudi_files[name] = handle.read()
            except OSError as exc:
                raise UsageError(f"--{name.replace('_', '-')} {path}: {exc.strerror}") from None
    if args.ssh_host_key:
        try:
            with open(args.ssh_host_key, encoding="ascii") as key_file:
                sudi_files["ssh_host_key"] = " ".join(key_file.read().split()[:2])
        except OSError as exc:
            raise UsageError(f"--ssh-host-key {args.ssh_host_key}: {exc.strerror}") from None
    common = dict(
        **sudi_files,
        version=args.version,
        fail_service=args.fail_service or "",
        fault_service=args.fault_service or "",
        auth_required=args.auth_required,
        mode=args.mode,
        flash_free=args.flash_free,
        installer=not args.no_installer,
    )
    specs = [(serial, "") for serial in args.serial] + list(args.device)
    devices = [SimulatedDevice(serial=serial, hostname="Switch", pid=pid or args.pid, **common) for serial, pid in specs]
    for stack in args.stack:
        (active, pid), *members = stack
        devices.append(SimulatedDevice(serial=active, hostname="Switch", pid=pid or args.pid,
                                       stack=tuple((serial, member_pid or args.pid) for serial, member_pid in members),
                                       **common))
    if args.count:
        devices += simulated_fleet(args.serial_prefix, args.count, pid=args.pid, **common)
    if not devices:
        raise UsageError("give --device SERIAL[:PID] (repeatable), --serial SN, --stack ... or --count N")
    lock = threading.Lock()
    fleet = args.count and not args.verbose  # a fleet: one line that counts, not a line per step
    done = [0]

    def progress(serial: str, text: str) -> None:
        if not fleet:
            with lock:
                print(f"{serial}: {text}", flush=True)

    def finished(result) -> None:
        with lock:
            done[0] += 1
            if fleet:
                print(f"\r{done[0]}/{len(devices)} devices done", end="", file=sys.stderr, flush=True)
            else:
                print(f"{result.serial}: {result.outcome} after {result.polls} polls ({result.reason}) "
                      f"[{' '.join(result.trace)}]", flush=True)

    simulator = AgentSimulator(
        args.url,
        max_polls=args.max_polls,
        max_wait=args.max_wait,
        time_scale=args.time_scale,
        verify_tls=not args.insecure,
        progress=progress,
        finished=finished,
    )
    results = simulator.run_many(devices, args.concurrency)
    if fleet:
        print(file=sys.stderr)
    outcomes: dict[str, int] = {}
    for result in results:
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
    print(", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())))
    bad = sum(count for outcome, count in outcomes.items() if outcome in ("http-error", "max-polls", "failed"))
    return 1 if bad else 0


def cmd_option43(args: argparse.Namespace) -> int:
    from .discovery import option43

    try:
        print(option43(args.server, port=args.port or DEFAULT_PORT, https=args.https, debug=args.debug))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


# ---------------------------------------------------------------------------- parser


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--log-level and --log-format, accepted before and after the command."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--log-level", default=default if suppress else "info",
                        choices=["debug", "info", "warning", "error"], help="log level (default: info)")
    parser.add_argument("--log-format", default=default if suppress else "text", choices=list(logs.FORMATS),
                        help="text lines, or one JSON object per line (default: text)")


def _datastore_arguments(parser: argparse.ArgumentParser, *, clixon: bool = True, state: bool = True) -> None:
    group = parser.add_mutually_exclusive_group() if clixon else parser
    group.add_argument("--datastore", metavar="FILE", default=DEFAULT_DATASTORE,
                       help="the declarations file (XML in the YANG's shape; read, never written) "
                       f"(default: {DEFAULT_DATASTORE} in the current folder)")
    if clixon:
        group.add_argument("--clixon-socket", metavar="PATH",
                           help="serve from a Clixon controller over its UNIX socket instead of a file "
                           "(e.g. /usr/local/var/run/controller/controller.sock; needs clixon-pyapi)")
    if state:
        parser.add_argument("--state", metavar="DB", help="the state database of the embedded mode "
                            "(default: FILE.state.db beside the declarations file)")


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where import and claim hand the declarations: a file, a clixon_cli script or a NETCONF body."""
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--output", metavar="FILE.xml", help="write a declarations file (atomically, mode 0600); "
                     "an existing file only with --merge")
    out.add_argument("--clixon-cli", action="store_true",
                     help="print a clixon_cli script (configure, set services pnp-device ..., commit) to review and paste")
    out.add_argument("--netconf", action="store_true",
                     help="print the <config> of a NETCONF edit-config on the candidate")
    parser.add_argument("--commit-every", type=positive, default=1000, metavar="N",
                        help="with --clixon-cli: a commit after every N devices, so each commit ends within the "
                        "controller's service-timeout (default: %(default)s)")
    parser.add_argument("--merge", action="store_true", help="with --output: add to the existing declarations file, "
                        "keeping its other declarations and its comments; serials it declares are kept as they are")
    parser.add_argument("--replace", action="store_true",
                        help="replace serials already declared: in the file with --merge; --clixon-cli deletes each "
                        "one first; --netconf uses operation replace instead of create")
    parser.add_argument("--controller-ssh-key", metavar="FILE", help="the SSH public key serve (or the service "
                        "module) will give templates, to check templates that use it")
    parser.add_argument("--template-dir", action="append", metavar="DIR",
                        help="where config template-file names are found to check them (repeatable; default: "
                        "templates/ beside --output, else beside the input)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pnp-service",
        description="Day-0 provisioning of Cisco devices over PnP, driven by a YANG controller or a declarations file.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description)
        _common(sub, suppress=True)
        return sub

    serve = command("serve", "run the PnP listener", "Run the PnP HTTP listener.")
    _datastore_arguments(serve)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    serve.add_argument("--public-url", help="base URL devices reach this listener at, for download URLs "
                       "(default: the URL each device called)")
    serve.add_argument("--secret-file", help="file with the secret that signs download URLs, shared by every "
                       "listener of one deployment (default: DATASTORE.secret; with --clixon-socket "
                       f"{SECRET_NAME} in --state-dir; created on first start, mode 0600)")
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); needs --tls-key")
    serve.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
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
    serve.add_argument("--dev", action="store_true", help="use Flask's development server instead of gunicorn")
    serve.set_defaults(func=cmd_serve)

    init = command("init", "write a commented example declarations file",
                   "Write a commented example declarations file (never overwrites one).")
    init.add_argument("file", nargs="?", default=DEFAULT_DATASTORE, help="where (default: %(default)s)")
    init.set_defaults(func=cmd_init)

    check = command("check", "validate and render every declaration",
                    "Check a declarations file against the YANG and render every device's plan; exit 1 on any error.")
    _datastore_arguments(check, clixon=False, state=False)
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
    _datastore_arguments(render, clixon=False, state=False)
    render.add_argument("serial")
    render.add_argument("--controller-ssh-key", metavar="FILE", help="the SSH public key serve will get, if any")
    render.set_defaults(func=cmd_render)

    status = command("status", "print each device's state (read-only)",
                     "Print declared devices (state, step, attempts, last contact, last error) and unclaimed ones. "
                     "Reads only; changes nothing.")
    _datastore_arguments(status)
    status.add_argument("--format", choices=["table", "json", "rfc7951", "xml"], default="table",
                        help="table; json: the table's rows; rfc7951 (JSON) or xml: the /pnp tree in the YANG's shape "
                        "(default: table)")
    status.add_argument("--watch", type=positive, nargs="?", const=2, default=0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status.set_defaults(func=cmd_status)

    reset = command("reset", "clear a device's status so it starts over",
                    "Clear the status of declared devices, so each starts over at its next poll.")
    _datastore_arguments(reset)
    reset.add_argument("--journal", help=argparse.SUPPRESS)
    reset.add_argument("serial", nargs="+")
    reset.set_defaults(func=cmd_reset)

    imported = command("import", "turn a CSV or YAML device list into declarations",
                       "Read a device list (CSV or YAML, with defaults and groups), check every device against the "
                       "YANG and plan it, and hand the declarations out: a declarations file (--output), a clixon_cli "
                       "script (--clixon-cli) or a NETCONF edit-config body (--netconf).  Nothing is written when any "
                       "device is wrong; each problem names the file, the line and the field.  See docs/import.md.")
    imported.add_argument("file", metavar="FILE.csv|FILE.yaml", help="the device list")
    imported.add_argument("--format", choices=["csv", "yaml"], help="the list's format (default: from the file name)")
    imported.add_argument("--groups", metavar="FILE.yaml",
                          help="a YAML file of defaults: and groups: (name -> fields) that devices name in group")
    _output_arguments(imported)
    imported.set_defaults(func=cmd_import)

    claim = command("claim", "declare devices that called in unclaimed",
                    "Turn unclaimed devices (they called in without a declaration) into declarations: their serial and "
                    "the PID they reported, with defaults and groups from --groups.  Printed as <pnp-device> XML to "
                    "add to your declarations file unless --output, --clixon-cli or --netconf says otherwise; "
                    "your file is written only with --output FILE --merge.")
    _datastore_arguments(claim)
    claim.add_argument("serial", nargs="+", help="serial of an unclaimed device (see pnp-service status)")
    claim.add_argument("--groups", metavar="FILE.yaml", help="a YAML file of defaults: and groups: (as for import)")
    claim.add_argument("--group", action="append", metavar="G",
                       help="a group of --groups to apply (repeatable, applied in order, e.g. site then role)")
    claim.add_argument("--hostname", metavar="H", help="the device's hostname (one serial only)")
    claim.add_argument("--template-file", metavar="NAME", help="its configuration template, a file in the template "
                       "folder (templates/ beside the declarations file; under a controller the service module's)")
    claim.add_argument("--var", action="append", default=[], metavar="NAME[:TYPE]=VALUE",
                       help="a template variable (repeatable; TYPE number, boolean or list as in a CSV header)")
    _output_arguments(claim)
    claim.set_defaults(func=cmd_claim)

    agent = command("agent", "simulate PnP agents against a listener",
                    "Simulate one or many IOS-XE PnP agents against a listener URL.")
    agent.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORT}", help="listener base URL (default: %(default)s)")
    agent.add_argument("--device", action="append", default=[], type=device_spec, metavar="SERIAL[:PID]",
                       help="a simulated device, with its product id (repeatable)")
    agent.add_argument("--serial", action="append", default=[], help="serial of a simulated device (repeatable)")
    agent.add_argument("--stack", action="append", default=[], type=stack_spec, metavar="SN[:PID],SN[:PID],...",
                       help="a simulated stack: its switches in slot order, the first one the active member that "
                       "calls in (repeatable)")
    agent.add_argument("--count", type=int, default=0, help="also simulate N devices named PREFIX0001...")
    agent.add_argument("--serial-prefix", default="SIM", help="serial prefix with --count (default: %(default)s)")
    agent.add_argument("--pid", default="C9300-24P", help="product id the devices report (default: %(default)s)")
    agent.add_argument("--version", dest="version", default="17.3.1", help="running version (default: %(default)s)")
    agent.add_argument("--fail-service", help="a PnP service the devices always fail, e.g. config-upgrade")
    agent.add_argument("--fault-service", help="a PnP service the devices answer with a fault")
    agent.add_argument("--auth-required", action="store_true", help="report authRequired, to get credentials")
    agent.add_argument("--mode", choices=["install", "bundle"], default="install",
                       help="boot packages.conf (install mode, the Catalyst 9000 default) or a .bin (default: %(default)s)")
    agent.add_argument("--flash-free", type=positive, default=8_000_000_000, help="free bytes on flash: (default: %(default)s)")
    agent.add_argument("--no-installer", action="store_true", help="the agent lacks the installer API (error 1827)")
    agent.add_argument("--verbose", action="store_true", help="with --count: a line per step of every device")
    agent.add_argument("--sudi-cert", metavar="PEM", help="the device's SUDI certificate (pnp-service sudi-lab makes one)")
    agent.add_argument("--ssh-host-key", metavar="FILE", help="play a device that speaks NETCONF with this host key "
                       "(a real NETCONF server's ssh_host_*_key.pub): it is what 'show crypto key mypubkey' shows")
    agent.add_argument("--sudi-key", metavar="PEM", help="the device's SUDI private key")
    agent.add_argument("--concurrency", type=positive, default=10, help="devices run at once (default: %(default)s)")
    agent.add_argument("--max-polls", type=positive, default=100, help="give up after N work requests (default: %(default)s)")
    agent.add_argument("--max-wait", type=float, default=60,
                       help="stop when told to back off longer than this many seconds (default: %(default)s)")
    agent.add_argument("--time-scale", type=float, default=1.0,
                       help="multiply every backoff by this (0 for no waiting; a backoff the listener repeats at once, "
                       "such as a retry after a failure, is waited out in real time; default: %(default)s)")
    agent.add_argument("--insecure", action="store_true", help="do not verify the listener's TLS certificate")
    agent.set_defaults(func=cmd_agent)

    option43 = command("option43", "print the DHCP option 43 string for a listener",
                       "Print the DHCP option 43 string that points PnP agents at a listener.")
    option43.add_argument("server", help="listener IPv4 or IPv6 address, or host name")
    option43.add_argument("--port", type=port_number, default=None,
                          help=f"listener port (default: {DEFAULT_PORT}, the port serve listens on)")
    option43.add_argument("--https", action="store_true", help="devices use HTTPS (K5)")
    option43.add_argument("--debug", action="store_true", help="turn agent debug on (D instead of N)")
    option43.set_defaults(func=cmd_option43)
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


if __name__ == "__main__":
    sys.exit(main())
