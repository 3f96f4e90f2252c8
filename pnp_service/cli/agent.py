"""``pnp-service agent`` (the simulator against a listener) and ``option43`` (what DHCP tells the agents)."""

from __future__ import annotations

import argparse
import logging
import sys

from .common import DEFAULT_PORT, UsageError, device_spec, port_number, positive

log = logging.getLogger("pnp_service")


def stack_spec(text: str) -> list[tuple[str, str]]:
    """``SERIAL[:PID],SERIAL[:PID],...``: a stack's switches in slot order, the first the active member."""
    members = [device_spec(part) for part in text.split(",") if part]
    if len(members) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a stack is two or more SERIAL[:PID], separated by commas")
    return members


def neighbor_spec(text: str) -> tuple[str, str]:
    """``DEVICE:PORT``: the upstream device and its port a simulated switch is cabled to."""
    device, colon, port = text.rpartition(":")
    if not colon or not device.strip() or not port.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give the upstream device and its port, e.g. dist-sw-1:Gi1/0/48")
    return device.strip(), port.strip()


def _device_files(args: argparse.Namespace) -> dict[str, object]:
    """What --sudi-cert, --sudi-key and --ssh-host-key name, read (one line on a file that cannot be)."""
    files: dict[str, object] = {}
    for name in ("sudi_cert", "sudi_key"):
        path = getattr(args, name)
        if path:
            try:
                with open(path, "rb") as handle:
                    files[name] = handle.read()
            except OSError as exc:
                raise UsageError(f"--{name.replace('_', '-')} {path}: {exc.strerror}") from None
    if args.ssh_host_key:
        try:
            with open(args.ssh_host_key, encoding="ascii") as key_file:
                files["ssh_host_key"] = " ".join(key_file.read().split()[:2])
        except OSError as exc:
            raise UsageError(f"--ssh-host-key {args.ssh_host_key}: {exc.strerror}") from None
    return files


def _devices(args: argparse.Namespace) -> list:
    """The simulated devices the options describe: single switches, stacks and a numbered fleet."""
    from ..simulator import SimulatedDevice, simulated_fleet

    common = dict(
        **_device_files(args),
        version=args.version,
        fail_service=args.fail_service or "",
        fault_service=args.fault_service or "",
        auth_required=args.auth_required,
        mode=args.mode,
        flash_free=args.flash_free,
        installer=not args.no_installer,
        neighbors=tuple(args.neighbor),
        topology=not args.no_topology,
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
    return devices


def cmd_agent(args: argparse.Namespace) -> int:
    import threading
    from urllib.parse import urlsplit

    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--url {args.url}: give the listener's URL with its scheme, e.g. http://127.0.0.1:8080")

    from ..simulator import AgentSimulator

    devices = _devices(args)
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
    from ..discovery import option43

    try:
        print(option43(args.server, port=args.port or DEFAULT_PORT, https=args.https, debug=args.debug))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


def add_parsers(command) -> None:
    """Add this module's commands; ``command(name, help, description)`` makes each subparser."""
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
    agent.add_argument("--neighbor", action="append", default=[], type=neighbor_spec, metavar="DEVICE:PORT",
                       help="the devices are cabled to this upstream device's port (repeatable: one uplink each); "
                       "they tell it by the topology service and by 'show cdp/lldp neighbors detail'")
    agent.add_argument("--no-topology", action="store_true",
                       help="the agent does not answer the topology service (asked by CLI instead)")
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
