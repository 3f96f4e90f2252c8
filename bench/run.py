"""pnp-service benchmark: the listener and the service module against their baselines, in one run.

    python bench/run.py                 # 10,000 devices, ~2 minutes on 2 cores
    python bench/run.py --devices 2000 --seconds 5    # quicker

Prints a table; --json FILE also writes the numbers.  Every ratio compares with a baseline measured in the
same run on the same server settings: for the listener, a bare Flask app that answers every WORK-REQUEST with
a fixed bye (bench/baseline_app.py), served by the same gunicorn configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from pnp_service import protocol
from pnp_service.simulator import messages
from pnp_service.model import Declaration

# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: The image the stalling downloads pull (sparse: no disk), and how many devices pull it.
STALL_IMAGE = "cat9k_iosxe.17.12.04.SPA.bin"
STALL_DOWNLOADS = 32


def write_datastore(path: str, count: int, image_md5: str = "") -> list[str]:
    serials = [f"BENCH{i:05d}" for i in range(count)]
    with open(path, "w") as out:
        out.write('<config><services xmlns="http://clicon.org/controller">')
        for index, serial in enumerate(serials):
            out.write(
                f'<pnp-device xmlns="urn:pnp-service:pnp"><serial>{serial}</serial><pid>C9300-24P</pid>'
                f"<hostname>sw{index}</hostname><config><template>hostname {{{{ hostname }}}}\n"
                "interface Vlan1\n ip address {{ ip }} 255.255.255.0\nend\n</template></config>"
                f"<variable><name>ip</name><value>10.{index // 65536}.{index // 256 % 256}.{index % 256}</value></variable>"
                "</pnp-device>"
            )
        for index in range(STALL_DOWNLOADS if image_md5 else 0):
            out.write(
                f'<pnp-device xmlns="urn:pnp-service:pnp"><serial>SLOW{index:03d}</serial><pid>C9300-24P</pid>'
                f"<hostname>slow{index}</hostname><config><template>hostname x</template></config><image>"
                f"<version>17.12.04</version><url>{STALL_IMAGE}</url><md5>{image_md5}</md5></image></pnp-device>"
            )
        out.write('</services></config>')
    return serials


def write_stall_image(folder: str, size: int = 512 * 1024 * 1024) -> str:
    """A large image for the stalling downloads (sparse), and its MD5."""
    import hashlib

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, STALL_IMAGE), "wb") as image:
        image.truncate(size)
    digest = hashlib.md5()
    block = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        digest.update(block)
    return digest.hexdigest()


class Stall:
    """What stalls a listener that gives each client a thread: idle connections, requests sent a byte every few
    seconds (head, or body), and devices pulling an image at about 128 KiB/s (a branch's WAN link)."""

    def __init__(self, port: int, idle: int = 200, slow_heads: int = 64, slow_bodies: int = 32, downloads: int = 0):
        self.port = port
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.received = [0] * downloads
        self.threads = [threading.Thread(target=self._download, args=(n,), daemon=True) for n in range(downloads)]
        for thread in self.threads:
            thread.start()
        for n in range(idle + slow_heads + slow_bodies):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
            if n >= idle + slow_heads:
                sock.sendall(b"POST /pnp/WORK-REQUEST HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n<pnp ")
            elif n >= idle:
                sock.sendall(b"POST /pnp/WORK-REQUEST HTTP/1.1\r\nHost: x\r\n")
            self.sockets.append(sock)
        threading.Thread(target=self._trickle, args=(idle,), daemon=True).start()

    def _trickle(self, idle: int) -> None:
        while not self.stop.wait(3):
            for sock in self.sockets[idle:]:
                with contextlib.suppress(OSError):
                    sock.send(b"a")

    def _download(self, n: int) -> None:
        udi = protocol.Udi("C9300-24P", "V01", f"SLOW{n:03d}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

            def post(path: str, body: bytes) -> messages.ServerMessage:
                connection.request("POST", path, body=body, headers={"Content-Type": "application/xml"})
                return messages.parse_server_message(connection.getresponse().read())

            post("/pnp/WORK-REQUEST", messages.work_request(udi, "c1"))
            post("/pnp/WORK-RESPONSE", messages.device_info(udi, "c1", platform="C9300-24P", version="17.3.1",
                                                            hostname="Switch", image_file="flash:x.bin"))
            install = post("/pnp/WORK-REQUEST", messages.work_request(udi, "c2"))
            location = install.find_text("image/copy/source/location")
            if not location:
                return
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            sock.sendall(f"GET {location.split(f':{self.port}', 1)[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while not self.stop.is_set():
                chunk = sock.recv(16 * 1024)
                if not chunk:
                    return
                self.received[n] += len(chunk)
                time.sleep(0.125)
            sock.close()
        except OSError:
            return

    def close(self) -> None:
        self.stop.set()
        for sock in self.sockets:
            sock.close()


def start(command: list[str], port: int, env=None, session: bool = False, what: str = "") -> subprocess.Popen:
    """Run a server (``session``: in a process group of its own, for a shell command) until it answers HELLO."""
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=session)
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{what or 'server'} exited with {server.returncode} before it answered: "
                               f"{' '.join(command)}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/pnp/HELLO")
            connection.getresponse().read()
            return server
        except OSError:
            time.sleep(0.2)
    stop(server, session)
    raise RuntimeError(f"{what or 'server'} did not answer HELLO on port {port} within 120 s: {' '.join(command)}")


def stop(server: subprocess.Popen, session: bool = False) -> None:
    signal_to = (lambda sig: os.killpg(server.pid, sig)) if session else server.send_signal
    with contextlib.suppress(ProcessLookupError):
        signal_to(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            signal_to(signal.SIGKILL)
        server.wait()


def peak_rss_kib(pid: int) -> int:
    """Largest resident set (VmHWM) of a process and its children (gunicorn workers)."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(child) for child in children]
    except FileNotFoundError:
        pass
    for each in pids:
        try:
            with open(f"/proc/{each}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def poll_load(port: int, serials: list[str], clients: int, seconds: float) -> dict:
    """Concurrent agents polling WORK-REQUEST over keep-alive connections for ``seconds``.

    With wrk installed (Debian: apt-get install wrk) the load comes from it: a C client leaves the CPU to the
    server, which matters on a small machine.  Otherwise from Python threads.
    """
    if shutil.which("wrk") and serials:
        return wrk_load(port, serials, clients, seconds)
    return python_load(port, serials, clients, seconds)


def wrk_load(port: int, serials: list[str], clients: int, seconds: float) -> dict:
    prefix = serials[0].rstrip("0123456789")
    indexes = [int(s[len(prefix):]) for s in serials]
    env = {**os.environ, "PNP_PREFIX": prefix, "PNP_FIRST": str(min(indexes)), "PNP_COUNT": str(len(serials))}
    result = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:.0f}s", "--latency", "-s", os.path.join(HERE, "work_request.lua"),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, env=env, timeout=seconds + 60, check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    numbers = json.loads(line[len("RESULT "):])
    return {
        "requests": numbers["requests"],
        "rps": numbers["requests"] / (numbers["duration_us"] / 1e6),
        "p50_ms": numbers["p50_us"] / 1000,
        "p99_ms": numbers["p99_us"] / 1000,
        "errors": numbers["errors"],
        "client": "wrk",
    }


def python_load(port: int, serials: list[str], clients: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = serials[index::clients] or serials
        bodies = [messages.work_request(protocol.Udi("C9300-24P", "V01", s), f"c-{s}") for s in mine]
        position = 0
        while time.perf_counter() < stop_at:
            body = bodies[position % len(bodies)]
            position += 1
            began = time.perf_counter()
            try:
                connection.request("POST", "/pnp/WORK-REQUEST", body=body, headers={"Content-Type": "text/xml"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    errors[index] += 1
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            latencies[index].append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.perf_counter() - began
    flat = sorted(x for per in latencies for x in per)
    return {
        "requests": len(flat),
        "rps": len(flat) / elapsed,
        "p50_ms": 1000 * flat[len(flat) // 2] if flat else 0,
        "p99_ms": 1000 * flat[int(len(flat) * 0.99)] if flat else 0,
        "errors": sum(errors),
        "client": "python",
    }


def provision_load(port: int, serials: list[str], clients: int) -> dict:
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    simulator = AgentSimulator(f"http://127.0.0.1:{port}", time_scale=0, max_polls=20)
    devices = [SimulatedDevice(serial) for serial in serials]
    began = time.perf_counter()
    results = simulator.run_many(devices, concurrency=clients)
    elapsed = time.perf_counter() - began
    configured = sum(r.outcome == "configured" for r in results)
    return {"devices": len(devices), "configured": configured, "devices_per_s": configured / elapsed, "seconds": elapsed}


# --------------------------------------------------------------------------- the listener


#: ``serve --server``: the worker class each model runs under gunicorn, for the baseline on the same settings.
WORKER_CLASSES = {"event": "pnp_service.serving.EventWorker", "threads": "gthread"}


def serve_command(app_args: list[str], port: int, workers: int, threads: int, model: str = "event") -> list[str]:
    return [sys.executable, "-m", "pnp_service.cli", "--log-level", "error", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--threads", str(threads), "--server", model, *app_args]


def baseline_command(port: int, workers: int, threads: int, model: str = "event") -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--chdir", HERE, "-b", f"127.0.0.1:{port}", "-w", str(workers),
            "--threads", str(threads), "-k", WORKER_CLASSES[model], "--log-level", "error", "--pythonpath", REPO,
            "baseline_app:create_app()"]


def interleaved(base_port: int, port: int, base_serials: list[str], serials: list[str], args,
                also: list["Also"] = ()) -> tuple[dict, dict, float]:
    """Baseline and listener polled in alternating rounds; medians, and the median of the paired ratios.

    On a shared machine the speed drifts from one minute to the next; pairing each measurement of the
    listener with a baseline measured right before it keeps that drift out of the ratio.  The ``also``
    servers are polled in the same rounds, right after the listener; their figures are kept on each of them.
    """
    rounds = max(1, args.rounds)
    seconds = max(2.0, args.seconds / rounds)
    pairs = []
    others: list[list[dict]] = [[] for _ in also]
    for _ in range(rounds):
        base = poll_load(base_port, base_serials, args.clients, seconds)
        ours = poll_load(port, serials, args.clients, seconds)
        pairs.append((base, ours))
        for other, results in zip(also, others):
            results.append({**poll_load(other.port, serials, args.clients, seconds), "ratio": 0.0, "base": base["rps"]})

    def median_of(results: list[dict]) -> dict:
        middle = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
        return {**middle, "rounds": len(results)}

    for other, results in zip(also, others):
        ratio = statistics.median(r["rps"] / r.pop("base") for r in results)
        other.results.append({**median_of(results), "ratio": ratio})
    ratio = statistics.median(ours["rps"] / base["rps"] for base, ours in pairs)
    return median_of([b for b, _ in pairs]), median_of([o for _, o in pairs]), ratio


class Also:
    """A server the user runs today, measured in the same rounds (``--also NAME='command serving on $PORT'``).

    Its command runs under ``bash -c`` with ``PORT`` (where to serve), ``PNP_BENCH_DATASTORE`` (the declarations
    file the listener serves, in its YANG's XML), ``PNP_BENCH_SERIALS`` (the declared serials, one a line) and
    ``PNP_BENCH_DIR`` (a scratch folder, removed at the end) in its environment.
    """

    def __init__(self, spec: str):
        name, equals, command = spec.partition("=")
        if not equals or not name.strip() or not command.strip():
            raise SystemExit(f"--also {spec!r}: give NAME='command that serves on $PORT'")
        self.name, self.command = name.strip(), command
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.results: list[dict] = []

    def start(self, workdir: str, datastore: str, serials: list[str]) -> None:
        self.port = free_port()
        listed = os.path.join(workdir, "serials.txt")
        with open(listed, "w") as out:
            out.write("\n".join(serials) + "\n")
        env = {**os.environ, "PORT": str(self.port), "PNP_BENCH_DATASTORE": datastore, "PNP_BENCH_SERIALS": listed,
               "PNP_BENCH_DIR": workdir}
        self.process = start(["bash", "-c", self.command], self.port, env=env, session=True,
                             what=f"--also {self.name}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, session=True)
            self.process = None


def bench_listener(args, workdir: str, also: list[Also] = ()) -> list[dict]:
    rows = []
    base_serials = [f"BASE{i:05d}" for i in range(args.devices)]
    images = os.path.join(workdir, "images")
    datastore = os.path.join(workdir, "bench.xml")
    serials = write_datastore(datastore, args.devices, write_stall_image(images))
    for model in args.servers.split(","):
        full = model == args.servers.split(",")[0]  # every row for the first model; the others: what compares them
        base_port, port = free_port(), free_port()
        baseline = start(baseline_command(base_port, args.workers, args.threads, model), base_port)
        try:
            began = time.perf_counter()
            server = start(serve_command(["--datastore", datastore, "--image-dir", images], port, args.workers,
                                         args.threads, model), port)
            startup = time.perf_counter() - began
            others = list(also) if full else []
            try:
                for other in others:
                    other.start(workdir, datastore, serials)
                provisioned = provision_load(port, serials[: args.provision], args.clients)
                for other in others:
                    other.results.append(provision_load(other.port, serials[: args.provision], args.clients))
                # Provisioned devices: the steady state, no write.
                base, steady, steady_ratio = interleaved(base_port, port, base_serials, serials[: args.provision], args,
                                                         others)
                if full:
                    # Planned devices: each poll sends the next step and writes (a new correlator each time).
                    _, writes, writes_ratio = interleaved(base_port, port, base_serials,
                                                          serials[args.provision:], args, others)
                    # Unknown devices: the first poll of each records it as unclaimed.
                    _, strangers, strangers_ratio = interleaved(
                        base_port, port, base_serials, [f"NEW{i:05d}" for i in range(args.devices)], args, others)
                rss = peak_rss_kib(server.pid)
                for other in others:
                    other.results.append({"rss_mib": peak_rss_kib(other.process.pid) / 1024})
                stalled = stalled_polls(port, serials[: args.provision], args)
            finally:
                stop(server)
                for other in others:
                    other.stop()
            base_rss = peak_rss_kib(baseline.pid)
        finally:
            stop(baseline)
        name = "event loop" if model == "event" else "gunicorn threads"
        rows.append({"what": f"baseline on {name}: bare Flask, fixed bye", **base, "rss_mib": base_rss / 1024})
        rows.append({"what": f"embedded on {name}, {args.devices} declared: poll of a provisioned device", **steady,
                     "ratio": steady_ratio, "rss_mib": rss / 1024})
        if full:
            rows.append({"what": "embedded: poll that sends the next step (writes)", **writes, "ratio": writes_ratio})
            rows.append({"what": "embedded: poll of an unclaimed device", **strangers, "ratio": strangers_ratio})
            rows.append({"what": f"embedded: full provisioning of {provisioned['devices']} devices",
                         "rps": provisioned["devices_per_s"], "unit": "devices/s",
                         "configured": provisioned["configured"], "seconds": provisioned["seconds"],
                         "startup_s": startup})
        rows.append({"what": f"embedded on {name}: poll of a provisioned device while {STALL_DOWNLOADS} slow downloads, "
                     "200 idle and 96 slow connections are held", **stalled})
        for other in others:
            rows += also_rows(other, name)
    if args.clixon_config:
        rows += bench_clixon(args, base_serials)
    return rows


def also_rows(other: Also, model: str) -> list[dict]:
    """The ``--also`` server's rows, in the listener's order: provisioning, steady, writes, unclaimed polls."""
    provisioned, steady, writes, strangers, memory = other.results
    return [
        {"what": f"--also {other.name} (against the baseline on {model}): poll of a provisioned device", **steady,
         **memory},
        {"what": f"--also {other.name}: poll that sends the next step", **writes},
        {"what": f"--also {other.name}: poll of an unclaimed device", **strangers},
        {"what": f"--also {other.name}: full provisioning of {provisioned['devices']} devices",
         "rps": provisioned["devices_per_s"], "unit": "devices/s", "configured": provisioned["configured"],
         "seconds": provisioned["seconds"]},
    ]


def stalled_polls(port: int, serials: list[str], args) -> dict:
    """Poll latency while slow and idle clients hold on: what a roll-out's polls see (errors: timed out)."""
    stall = Stall(port, downloads=STALL_DOWNLOADS)
    try:
        time.sleep(2)
        result = poll_load(port, serials, args.clients, max(4.0, args.seconds / 2))
        result["downloading"] = sum(1 for n in stall.received if n)
        return result
    finally:
        stall.close()


def clixon_cli(config: str, *words: str) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(["clixon_cli", "-f", config, "-1", "-m", "configure", *words], capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    if result.returncode != 0 or "Failed" in output:
        subprocess.run(["clixon_cli", "-f", config, "-1", "-m", "configure", "discard"], capture_output=True, timeout=60)
        raise RuntimeError(f"clixon_cli {' '.join(words)} failed: {output.strip()}")
    return time.perf_counter() - began, output


def clixon_declare(sockpath: str, serials: list[str], remove: bool = False) -> None:
    """Write (or remove) bench declarations into the candidate in one edit."""
    from pnp_service.stores.clixon import Session

    entries = []
    for index, serial in enumerate(serials):
        if remove:
            entries.append(f'<pnp-device nc:operation="remove"><serial>{serial}</serial></pnp-device>')
        else:
            entries.append(
                f"<pnp-device><serial>{serial}</serial><pid>C9300-24P</pid><hostname>sw{index}</hostname>"
                "<config><template>hostname {{ hostname }}\ninterface Vlan1\n ip address {{ ip }} 255.255.255.0\nend\n</template></config>"
                f"<variable><name>ip</name><value>10.{index // 65536}.{index // 256 % 256}.{index % 256}</value></variable></pnp-device>"
            )
    body = f'<services xmlns="http://clicon.org/controller" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">' \
        f'<pnp-device-wrapper/>{"".join(entries)}</services>'.replace("<pnp-device-wrapper/>", "")
    body = body.replace("<pnp-device", '<pnp-device xmlns="urn:pnp-service:pnp"')
    if remove:
        pnp = "".join(f'<device nc:operation="remove"><serial>{s}</serial></device>' for s in serials)
        body += f'<pnp xmlns="urn:pnp-service:pnp" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">{pnp}</pnp>'
    session = Session(sockpath)
    try:
        lock_candidate(session)
        try:
            session.edit_config(body)
        finally:
            session.unlock()
    finally:
        session.close()


def lock_candidate(session, patience: float = 120.0) -> None:
    """Lock the candidate, waiting while someone else holds it (a stopped listener's last journal commit)."""
    from pnp_service.stores.clixon.netconf import RpcError

    deadline = time.monotonic() + patience
    while True:
        try:
            session.lock()
            return
        except RpcError as exc:
            if not exc.busy or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def clixon_commit(config: str, *how: str) -> float:
    return clixon_cli(config, "commit", *how)[0]


def bench_clixon(args, base_serials: list[str]) -> list[dict]:
    """The service module inside the controller and the listener on the Clixon store, with N declared."""
    from lxml import etree

    config = args.clixon_config
    sockpath = etree.parse(config).getroot().findtext("{http://clicon.org/config}CLICON_SOCK") or \
        "/usr/local/var/run/controller/controller.sock"
    rows = []
    small = [f"CLXB{i:05d}" for i in range(100)]
    large = [f"CLXB{i:05d}" for i in range(max(args.devices, len(small)))]
    added = {}
    try:
        declared = 0
        batches = [small] + [large[i : i + args.clixon_batch] for i in range(len(small), len(large), args.clixon_batch)]
        for number, batch in enumerate(batches):
            clixon_declare(sockpath, batch)
            elapsed = clixon_commit(config)
            declared += len(batch)
            if number in (1, len(batches) - 1) and number:
                rows.append({"what": f"controller commit adding {len(batch)} declarations to {declared - len(batch)}",
                             "seconds": elapsed, "per_device_ms": 1000 * elapsed / len(batch)})
            if declared in (len(small), len(large)):
                rows.append({"what": f"service module's own read of one declaration (session + get-config), {declared} declared",
                             "seconds": module_read(sockpath, batch[-20:])})
                ours = statistics.median(one_change_commit(config, batch[0], f"{declared}-{n}") for n in range(4))
                theirs = statistics.median(unrelated_commit(config, f"{declared}-{n}") for n in range(1, 5))
                added[declared] = max(ours - theirs, 0.0)
                rows.append({"what": f"controller commit changing 1 pnp-device, {declared} declared", "seconds": ours})
                rows.append({"what": f"controller commit changing no service, {declared} declared", "seconds": theirs})
        for declared in (len(small), len(large)):
            rows.append({"what": f"what running the service adds to a one-device commit, {declared} declared",
                         "seconds": added[declared]})
        port = free_port()
        journal = os.path.join(tempfile.gettempdir(), f"bench-{uuid.uuid4().hex}.journal")
        base_port = free_port()
        baseline = start(baseline_command(base_port, args.workers, args.threads), base_port)
        server = start(serve_command(["--clixon-socket", sockpath, "--journal", journal], port, args.workers, args.threads), port)
        try:
            provisioned = provision_load(port, large[: args.provision], args.clients)
            _, steady, steady_ratio = interleaved(base_port, port, base_serials, large[: args.provision], args)
            _, first, first_ratio = interleaved(base_port, port, base_serials, large[args.provision :], args)
            rss = peak_rss_kib(server.pid)
        finally:
            stop(server)
            stop(baseline)
            with contextlib.suppress(OSError):
                os.unlink(journal)
        rows.append({"what": f"clixon, {len(large)} declared: poll of a provisioned device", **steady,
                     "ratio": steady_ratio, "rss_mib": rss / 1024})
        rows.append({"what": "clixon: poll that sends the next step (journaled write)", **first, "ratio": first_ratio})
        rows.append({"what": f"clixon: full provisioning of {provisioned['devices']} devices", "rps": provisioned["devices_per_s"],
                     "unit": "devices/s"})
    finally:
        # Declarations and their work go in one edit; a local commit runs no service for them.
        try:
            clixon_declare(sockpath, large, remove=True)
            clixon_commit(config, "local")
        except Exception as exc:  # the measurements stand; say what is left behind
            print(f"warning: the bench declarations CLXB* are left in the controller ({exc}); remove them with "
                  "`delete services pnp-device` / `delete pnp` and `commit local` in clixon_cli", file=sys.stderr)
    return rows


def module_read(sockpath: str, serials: list[str]) -> float:
    """What the service module costs the controller per changed instance: a session and a one-serial read."""
    from pnp_service.stores.clixon.netconf import fetch_declarations, session

    times = []
    for serial in serials:
        began = time.perf_counter()
        with session(sockpath) as opened:
            found = fetch_declarations(opened, "running", [serial])
        times.append(time.perf_counter() - began)
        assert serial in found, serial
    return statistics.median(times)


def one_change_commit(config: str, serial: str, tag: str) -> float:
    clixon_cli(config, "set", "services", "pnp-device", serial, "hostname", f"changed{tag}")
    return clixon_commit(config)


def unrelated_commit(config: str, tag: str) -> float:
    """A controller commit that changes no service instance (services/service-timeout): the transaction's own cost."""
    clixon_cli(config, "set", "services", "service-timeout", str(300 + int(tag.rsplit("-", 1)[1]) % 2))
    return clixon_commit(config)


# --------------------------------------------------------------------------- the service module


def element_class():
    try:
        os.environ.setdefault("NO_CLIXON_ARGS", "1")
        from clixon.element import Element

        return Element, "clixon-pyapi Element"
    except ImportError:
        from pnp_service.element_standin import Element

        return Element, "stand-in Element"


def declarations(count: int) -> dict[str, Declaration]:
    return {
        f"SVC{i:05d}": Declaration(
            serial=f"SVC{i:05d}", pid="C9300-24P", hostname=f"sw{i}",
            template="hostname {{ hostname }}\ninterface Vlan1\n ip address {{ ip }} 255.255.255.0\nend\n",
            variables=(("ip", f"10.0.{i // 256 % 256}.{i % 256}"),),
        )
        for i in range(count)
    }


def bench_service_module(sizes: list[int]) -> list[dict]:
    import logging

    from pnp_service.service_module import setup

    Element, kind = element_class()
    log = logging.getLogger("bench")
    rows = []
    one_change = {}
    for size in sizes:
        table = declarations(size)
        tracemalloc.start()
        began = time.perf_counter()
        root = Element()
        setup(root, log, instance=None, read_declarations=lambda instance, table=table: table)
        elapsed = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append({"what": f"service module: plan all {size} declarations ({kind})", "seconds": elapsed,
                     "per_device_ms": 1000 * elapsed / size, "peak_mib": peak / 2**20})
        # One changed instance with `size` declared.  pyapi hands the module what SERVICE_XPATH selects
        # (nothing), and the module reads that one declaration: what it costs must not depend on `size`.
        changed = next(iter(table))
        times = []
        for _ in range(20):
            root = Element()
            began = time.perf_counter()
            setup(root, log, instance=changed, read_declarations=lambda instance, table=table: {instance: table[instance]})
            times.append(time.perf_counter() - began)
        one_change[size] = statistics.median(times)
        rows.append({"what": f"service module: commit changing 1 of {size}", "seconds": one_change[size]})
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        rows.append({"what": f"one-change time, {large} vs {small} declared", "ratio": one_change[large] / one_change[small]})
    return rows


# --------------------------------------------------------------------------- main


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    lines = ["| measurement | throughput | p50 ms | p99 ms | ratio to baseline | memory MiB |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        rate = f"{row['rps']:.0f} {row.get('unit', 'req/s')}" if "rps" in row else (f"{row['seconds']*1000:.2f} ms" if "seconds" in row else "")
        if row.get("errors"):
            rate += f" ({row['errors']} timed out or failed)"
        memory = row.get("rss_mib", row.get("peak_mib"))
        lines.append(
            f"| {row['what']} | {rate} | {row.get('p50_ms', 0):.2f} | {row.get('p99_ms', 0):.2f} | "
            f"{row['ratio']:.2f} | {memory:.0f} |".replace("| 0.00 | 0.00 |", "| | |")
            if "ratio" in row and memory is not None
            else f"| {row['what']} | {rate} | {row.get('p50_ms', 0):.2f} | {row.get('p99_ms', 0):.2f} | "
            f"{row['ratio']:.2f} | |".replace("| 0.00 | 0.00 |", "| | |")
            if "ratio" in row
            else f"| {row['what']} | {rate} | {row.get('p50_ms', 0):.2f} | {row.get('p99_ms', 0):.2f} | | "
            f"{'' if memory is None else f'{memory:.0f}'} |".replace("| 0.00 | 0.00 |", "| | |")
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000, help="declared devices in the store (default: %(default)s)")
    parser.add_argument("--provision", type=int, default=500, help="devices driven to provisioned (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent simulated agents (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=15, help="length of each poll measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating baseline/listener rounds each measurement is split into (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers, for both servers (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default: %(default)s)")
    parser.add_argument("--servers", default="event,threads",
                        help="server models to measure, each against a baseline on the same model: event (serve's "
                        "default) and threads (gunicorn's threaded worker) (default: %(default)s)")
    parser.add_argument("--plan-sizes", default="1000,10000", help="declaration counts for the service module")
    parser.add_argument("--clixon-config", help="also measure inside this Clixon controller (its config file; "
                        "pnp-service installed into it; bench declarations are added and removed again)")
    parser.add_argument("--clixon-batch", type=int, default=1000,
                        help="declarations added per controller commit (default: %(default)s; the controller runs the "
                        "service once per changed instance, and one commit must finish within its service-timeout)")
    parser.add_argument("--also", action="append", default=[], metavar="NAME='COMMAND'",
                        help="also measure another server in the same rounds, started by COMMAND (run by bash) serving "
                        "on $PORT, for example a PnP server you run today (docs/benchmark.md); repeatable")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    also = [Also(spec) for spec in args.also]

    workdir = tempfile.mkdtemp(prefix="pnp-bench-")
    try:
        rows = bench_listener(args, workdir, also)
        rows += bench_service_module([int(n) for n in args.plan_sizes.split(",")])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"pnp-service benchmark on {machine()}")
    print(f"{args.devices} devices, {args.clients} clients, gunicorn {args.workers} workers x {args.threads} threads, "
          f"{args.seconds:.0f} s per poll measurement in {args.rounds} alternating rounds, load from "
          f"{'wrk' if shutil.which('wrk') else 'Python threads'}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine(), "args": vars(args), "rows": rows}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
