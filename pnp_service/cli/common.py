"""What every command shares: its options for logs and the datastore, opening the store, the state folder,
private files, and UsageError (a command line that cannot work, said in one line)."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import tempfile
from .. import logs
from ..stores.base import Store, StoreError

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


def state_file(args: argparse.Namespace, given: str | None, name: str) -> str:
    """``given``, else ``name`` in --state-dir (created private)."""
    if given:
        return given
    folder = getattr(args, "state_dir", None) or default_state_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"state folder {folder}: {exc.strerror} (choose one with --state-dir)") from None
    return os.path.join(folder, name)


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


def device_spec(text: str) -> tuple[str, str]:
    """``SERIAL`` or ``SERIAL:PID``."""
    from ..model import is_serial

    serial, _, pid = text.partition(":")
    if not is_serial(serial):
        raise argparse.ArgumentTypeError(f"{serial!r} is not a serial number (letters, digits, . _ -)")
    return serial, pid


def step_registry():
    from ..steps import StepRegistryError, default_registry

    try:
        return default_registry()
    except StepRegistryError as exc:
        raise StoreError(str(exc)) from None


def open_store(args: argparse.Namespace, *, read_only: bool = False, tolerate_invalid: bool = False) -> Store:
    from ..stores.base import UnclaimedPolicy

    policy = UnclaimedPolicy(getattr(args, "max_unclaimed", None) or UnclaimedPolicy.max_entries,
                             getattr(args, "unclaimed_days", None) or UnclaimedPolicy.keep_days)
    if getattr(args, "clixon_socket", None):
        from ..stores.clixon import ClixonStore  # imports clixon-pyapi: only on demand

        journal = None if read_only else state_file(args, getattr(args, "journal", None), JOURNAL_NAME)
        # Several workers of one listener share no memory: like several listeners, they read and write through.
        write_through = bool(getattr(args, "write_through", False)) or getattr(args, "workers", 1) > 1
        return ClixonStore(args.clixon_socket, journal_path=journal, read_only=read_only, unclaimed_policy=policy,
                           write_through=write_through and not read_only)
    from ..stores.embedded import EmbeddedStore

    return EmbeddedStore(args.datastore, getattr(args, "state", None), read_only=read_only,
                         known_step_types=step_registry().names(), context=template_context(args), unclaimed_policy=policy,
                         tolerate_invalid=tolerate_invalid)


def timeline_file(args: argparse.Namespace, create: bool = True) -> str:
    """Where the devices' timelines are kept: beside the state database, or in --state-dir under a controller."""
    from ..timeline import default_path

    if getattr(args, "clixon_socket", None):
        if not create:
            return os.path.join(getattr(args, "state_dir", None) or default_state_dir(), "timeline.db")
        return state_file(args, None, "timeline.db")
    from ..stores.embedded import default_state_path

    return default_path(getattr(args, "state", None) or default_state_path(args.datastore))


def template_context(args: argparse.Namespace) -> dict[str, object]:
    """``--controller-ssh-key FILE``: the controller's public key, as template variables."""
    path = getattr(args, "controller_ssh_key", None)
    if not path:
        return {}
    from ..planner import PlanningError, controller_variables

    try:
        with open(path, encoding="ascii") as handle:
            return controller_variables(handle.read().strip())
    except OSError as exc:
        raise UsageError(f"--controller-ssh-key {path}: {exc.strerror}") from None
    except PlanningError as exc:
        raise UsageError(f"--controller-ssh-key {path}: {exc}") from None


def readable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def warn_if_readable(path: str, what: str) -> None:
    if readable_by_others(path):
        logs.event(log, logging.WARNING, "file-readable-by-others", file=os.path.abspath(path), holds=what,
                   fix=f"chmod 600 {path}")


def read_text(path: str, what: str) -> str:
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


def log_arguments(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--log-level and --log-format, accepted before and after the command."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--log-level", default=default if suppress else "info",
                        choices=["debug", "info", "warning", "error"], help="log level (default: info)")
    parser.add_argument("--log-format", default=default if suppress else "text", choices=list(logs.FORMATS),
                        help="text lines, or one JSON object per line (default: text)")


def datastore_arguments(parser: argparse.ArgumentParser, *, clixon: bool = True, state: bool = True) -> None:
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
