"""deploy/: the systemd units and the Dockerfile say what the command line and the listener need.

The units' ExecStart and the Dockerfile's CMD are parsed with the real argument parser, so a renamed flag
breaks these tests; every path the listener writes must be one the unit lets it write.  ``systemd-analyze
verify`` lints the units where it exists, on a copy whose ExecStart names this environment's pnp-service (verify
refuses a binary that does not exist, and /opt/pnp-service is not installed here).  The image is built only
where a Docker engine answers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse

import pytest

from conftest import REPO
from pnp_service.cli import build_parser

DEPLOY = os.path.join(REPO, "deploy")
UNITS = ["pnp-service.service", "pnp-service-controller.service"]
INSTALLED = "/opt/pnp-service/.venv/bin/pnp-service"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in open(os.path.join(DEPLOY, name), encoding="utf-8"):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{name}: {line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(values: dict[str, list[str]], key: str) -> str:
    assert len(values.get(key, [])) == 1, f"{key}: {values.get(key)}"
    return values[key][0]


def serve_arguments(command: list[str]):
    assert command[0] in (INSTALLED, "pnp-service"), command[0]
    args = build_parser().parse_args(command[1:])  # a flag the command does not know exits here
    assert args.command == "serve"
    return args


def under(path: str, folders: list[str]) -> bool:
    return any(os.path.commonpath([path, folder.lstrip("-")]) == folder.lstrip("-") for folder in folders)


@pytest.mark.parametrize("name", UNITS)
def test_a_unit_runs_the_listener_as_its_own_user_hardened_and_restarted(name):
    service = unit(name)["Service"]
    assert one(service, "User") == "pnp-service" and one(service, "Group") == "pnp-service"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "Restart") == "on-failure"
    args = serve_arguments(shlex.split(one(service, "ExecStart")))
    writable = service["ReadWritePaths"]
    assert "/var/lib/pnp-service" in writable
    assert one(service, "StateDirectory") == "pnp-service"
    # Every file the listener writes is in a folder the unit lets it write (ProtectSystem=strict makes the
    # rest read-only): the secret, and the state database or the journal.
    written = [args.secret_file, args.state if not args.clixon_socket else args.journal]
    assert all(path and os.path.isabs(path) and under(path, writable) for path in written), (written, writable)
    if args.port < 1024:
        assert one(service, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
        assert "CAP_NET_BIND_SERVICE" in one(service, "CapabilityBoundingSet").split()
    assert unit(name)["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_embedded_unit_serves_the_declarations_file_under_etc():
    args = serve_arguments(shlex.split(one(unit("pnp-service.service")["Service"], "ExecStart")))
    assert args.datastore == "/etc/pnp-service/declarations.xml" and not args.clixon_socket
    assert args.state == "/var/lib/pnp-service/state.db"
    assert not under(args.datastore, unit("pnp-service.service")["Service"]["ReadWritePaths"])  # read, never written


def test_the_controller_unit_reaches_the_controller_socket_after_the_controller():
    sections = unit("pnp-service-controller.service")
    service = sections["Service"]
    args = serve_arguments(shlex.split(one(service, "ExecStart")))
    assert args.clixon_socket == "/usr/local/var/run/controller/controller.sock"
    assert one(service, "SupplementaryGroups") == "clicon"
    assert "clixon_controller.service" in " ".join(sections["Unit"]["After"]).split()
    assert under(args.clixon_socket, service["ReadWritePaths"])


def verify(name: str, tmp_path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` on a copy of the unit whose ExecStart names an existing pnp-service."""
    here = shutil.which("pnp-service") or os.path.join(os.path.dirname(sys.executable), "pnp-service")
    if not os.access(here, os.X_OK):
        pytest.skip(f"no pnp-service executable beside {sys.executable} to stand in for {INSTALLED}")
    text = open(os.path.join(DEPLOY, name), encoding="utf-8").read()
    assert INSTALLED in text
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED, here), encoding="utf-8")
    return subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed (Debian: apt-get install systemd)")


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_finds_nothing_to_say(name, tmp_path):
    result = verify(name, tmp_path)
    # verify exits 0 on unknown keys and bad values too: what it says about the unit counts as a failure.
    about_it = [line for line in (result.stdout + result.stderr).splitlines() if name in line]
    assert result.returncode == 0 and about_it == [], result.stdout + result.stderr


@needs_systemd_analyze
def test_systemd_analyze_verify_would_see_a_mistake(tmp_path, monkeypatch):
    """The check above can fail: a misspelt key in a copy is reported."""
    broken = tmp_path / "src"
    broken.mkdir()
    text = open(os.path.join(DEPLOY, UNITS[0]), encoding="utf-8").read().replace("ProtectSystem=", "ProtectSytem=")
    (broken / UNITS[0]).write_text(text, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "DEPLOY", str(broken))
    result = verify(UNITS[0], tmp_path)
    assert "Unknown key" in result.stdout + result.stderr and "ProtectSytem" in result.stdout + result.stderr


# ----------------------------------------------------------------- Dockerfile


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for raw in open(os.path.join(DEPLOY, "Dockerfile"), encoding="utf-8"):
        line = raw.rstrip("\n")
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    out = []
    for line in joined:
        keyword, _, rest = line.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def instruction(keyword: str) -> list[str]:
    return [rest for found, rest in instructions() if found == keyword]


def test_the_image_runs_serve_with_the_real_flags_on_the_volume_and_the_exposed_port():
    [cmd] = instruction("CMD")
    args = serve_arguments(json.loads(cmd))  # exec form: a JSON array
    assert args.datastore == "/data/declarations.xml" and args.host == "0.0.0.0"
    assert instruction("EXPOSE") == [str(args.port)]
    assert instruction("VOLUME") == [os.path.dirname(args.datastore)]
    [user] = instruction("USER")
    assert user not in ("root", "0")
    [base] = instruction("FROM")
    assert base.startswith("python:3.11-slim")
    [apt] = [run for run in instruction("RUN") if "apt-get install" in run]
    assert "libyang2-dev" in apt.split() and "gcc" in apt.split()
    for source in [part for copy in instruction("COPY") for part in copy.split()[:-1]]:
        assert os.path.exists(os.path.join(REPO, source)), f"COPY {source}: not in the repository"


def healthcheck_command() -> list[str]:
    [check] = instruction("HEALTHCHECK")
    return json.loads(check[check.index("CMD") + 3:].strip())


def test_the_healthcheck_asks_hello_on_the_port_served():
    command = healthcheck_command()
    [url] = re.findall(r"https?://[^'\"]+", command[-1])
    parts = urllib.parse.urlsplit(url)
    args = serve_arguments(json.loads(instruction("CMD")[0]))
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", args.port, "/pnp/HELLO")


def test_the_healthcheck_passes_on_a_listener_and_fails_without_one(serve, example_path):
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    running = serve(example_path)
    here = command[2].replace("http://127.0.0.1:8080", running.url)
    assert subprocess.run([sys.executable, "-c", here], timeout=30).returncode == 0
    port = running.url.rsplit(":", 1)[1]
    running.stop()
    gone = command[2].replace("8080", port)
    assert subprocess.run([sys.executable, "-c", gone], capture_output=True, timeout=30).returncode != 0


def test_the_image_builds():
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker engine answers `docker info` here")
    result = subprocess.run(["docker", "build", "-f", os.path.join(DEPLOY, "Dockerfile"), "-t", "pnp-service:test",
                             REPO], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_without_libyangs_headers_pip_install_says_in_one_line_which_package_to_install():
    import runpy
    import subprocess

    check = runpy.run_path(os.path.join(REPO, "build_support", "libyang.py"))["missing_libyang"]
    failing = lambda command: subprocess.CompletedProcess(command, 1)  # noqa: E731
    message = check({}, which=lambda name: "/usr/bin/pkg-config", run=failing, exists=lambda path: False)
    assert "apt-get install libyang2-dev" in message and "\n" not in message
    assert check({}, which=lambda name: None, run=failing, exists=lambda path: path.endswith("libyang/libyang.h")) == ""
    passing = lambda command: subprocess.CompletedProcess(command, 0)  # noqa: E731
    assert check({}, which=lambda name: "/usr/bin/pkg-config", run=passing, exists=lambda path: False) == ""
    assert check({"LIBYANG_HEADERS": "/opt/ly/include"}, which=lambda name: None, run=failing,
                 exists=lambda path: False) == ""


def test_the_bindings_release_is_pinned_to_the_one_that_builds_on_every_libyang_2_1():
    setup = open(os.path.join(REPO, "setup.py")).read()
    assert '"libyang==2.8.0"' in setup and "cryptography>=" in setup.split("extras_require")[0]


# --------------------------------------------------------------------------- the Grafana dashboard


DASHBOARD = os.path.join(REPO, "deploy", "grafana-dashboard.json")


def exposed_families(text: str) -> set[str]:
    """Metric families /metrics declares (``# TYPE name kind``), with counters' ``_total`` taken off."""
    return {re.sub(r"_total$", "", line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE ")}


def family_of(name: str) -> str:
    return re.sub(r"_(total|bucket|count|sum)$", "", name)


def test_every_dashboard_query_reads_a_metric_the_listener_exposes(serve, example_path):
    import http.client

    dashboard = json.load(open(DASHBOARD))
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"  # imported with the user's own Prometheus
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {family_of(name) for query in queries for name in re.findall(r"\bpnp_[a-z_]+", query)}
    assert len(queries) >= 10 and len(used) >= 10
    running = serve(example_path)
    connection = http.client.HTTPConnection("127.0.0.1", running.server.port, timeout=5)
    connection.request("GET", "/metrics")
    exposed = exposed_families(connection.getresponse().read().decode())
    assert used <= exposed, f"the dashboard reads metrics the listener does not expose: {sorted(used - exposed)}"


def test_the_dashboard_check_would_see_a_renamed_metric():
    assert family_of("pnp_store_write_seconds_bucket") == "pnp_store_write_seconds"
    exposed = exposed_families("# TYPE pnp_messages counter\n# TYPE pnp_devices gauge\n")
    assert {"pnp_messages", "pnp_devices"} == exposed and "pnp_message" not in exposed
