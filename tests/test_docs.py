"""Docs are tests: every command a user can paste from README.md and docs/*.md runs here as written.

Each command block of the docs is claimed by a scenario below that runs its lines, taken from the docs at test
time (a renamed flag or a wrong path fails here, not for a user), or by the integration suite on a real
controller (tests/integration/test_docs_controller.py), or by CI (.ci/run runs the README's two commands in a
fresh clone), or it is exempt with the reason: a Docker engine, systemd as PID 1, changes to this machine's
users.  ``test_every_command_block_is_claimed`` fails for a block nobody claims.
"""

from __future__ import annotations

import json
import os
import re

import pytest

import docs_harness as docs
from docs_harness import Sandbox, find

#: Blocks run outside this file, by their first line, and why.
ELSEWHERE = {
    ("README.md", "./install.sh && .venv/bin/pnp-service serve --datastore pnp-datastore.xml --host 127.0.0.1 --port 8080"):
        "CI: .ci/run runs it as written in a fresh clone and checks the listener answers",
    ("README.md", "./install.sh --dev && .venv/bin/python -m pytest -q"): "CI: .ci/run runs it as written",
    ("README.md", "install -m 0644 deploy/pnp-service.service /etc/systemd/system/ && systemctl enable --now pnp-service"):
        "exempt: needs systemd as PID 1 and a Docker engine; tests/test_deploy.py checks the units and the Dockerfile",
    ("README.md", "PNP_CLIXON_CONFIG=/usr/local/etc/clixon/controller.xml .venv/bin/python -m pytest tests/integration"):
        "it is the integration suite",
    ("README.md", "sudo apt-get install wrk     # optional: a C load generator; without it Python threads make the load"):
        "exempt: installs a Debian package (CI installs wrk); test_benchmark_runs_with_small_numbers runs bench/run.py",
    ("docs/benchmark.md", ".venv/bin/python bench/run.py                      # 10,000 devices; about 3 minutes on 2 cores"):
        "exempt: minutes of load; test_benchmark_runs_with_small_numbers runs it with small numbers",
    ("docs/benchmark.md", ".venv/bin/python bench/run.py --also 'twin=.venv/bin/pnp-service --log-level error serve "
                          "--datastore $PNP_BENCH_DATASTORE --state $PNP_BENCH_DIR/twin.db --host 127.0.0.1 --port $PORT'"):
        "test_benchmark_puts_another_server_in_the_same_rounds pastes it, with small numbers added",
    ("docs/deploy.md", "apt-get install -y python3-venv libyang2-dev pkg-config gcc"):
        "exempt: changes this machine (users, /etc, /opt, systemd units); tests/test_deploy.py checks the units",
    ("docs/deploy.md", "sudoedit /etc/pnp-service/declarations.xml"):
        "exempt: the service's own paths under /etc and /var/lib; the same commands run in the embedded scenarios",
    ("docs/deploy.md", "useradd --system --home-dir /var/lib/pnp-service --no-create-home --shell /usr/sbin/nologin pnp-service"):
        "exempt: changes this machine's users and systemd units",
    ("docs/deploy.md", "docker build -f deploy/Dockerfile -t pnp-service ."): "exempt: no Docker engine here",
    ("docs/deploy.md", "docker volume create pnp-data"): "exempt: no Docker engine here",
    ("docs/deploy.md", "docker run --rm -i -v pnp-data:/data pnp-service sh -c 'umask 077; cat > /data/declarations.xml' < declarations.xml"):
        "exempt: no Docker engine here",
    ("docs/mutation.md", ".venv/bin/python tools/mutate.py pnp_service/protocol.py --tests tests/test_protocol.py "
                         "tests/test_provisioner.py tests/test_real_switches.py --limit 35 --seed 1"):
        "exempt: minutes of test runs; tests/test_mutate.py runs the tool on a small sample",
}
#: Blocks this file runs: their first line -> the scenario.
HERE = {
    ("README.md", ".venv/bin/pnp-service agent --url http://127.0.0.1:8080 --serial FOC2001X0AB --serial STRANGER1 --time-scale 0"):
        "quick start",
    ("docs/embedded.md", "pnp-service init pnp-datastore.xml                 # a commented example with two devices (never overwrites)"):
        "embedded",
    ("docs/embedded.md", "$ pnp-service check --datastore pnp-datastore.xml"): "embedded",
    ("docs/embedded.md", "$ pnp-service status --datastore pnp-datastore.xml"): "quick start",
    ("docs/embedded.md", "pnp-service reset --datastore pnp-datastore.xml FOC2001X0AB   # clears its status: it starts over"):
        "quick start",
    ("docs/operations.md", "curl -s http://127.0.0.1:8080/healthz"): "quick start",
    ("docs/operations.md", "pnp-service status --datastore pnp-datastore.xml --watch      # redraws every 2 s"): "quick start",
    ("docs/operations.md", "pnp-service status --datastore pnp-datastore.xml FOC2001X0AB"): "quick start",
    ("docs/operations.md", "pnp-service serve --datastore pnp-datastore.xml --port 8080 --ui 8081"): "roll-out page",
    ("docs/operations.md", "head -c 24 /dev/urandom | base64 > ui.token && chmod 600 ui.token"): "roll-out page",
    ("README.md", "pnp-service import devices.csv --groups groups.yaml                           # check every row, write nothing"):
        "import",
    ("docs/import.md", "$ pnp-service import broken.csv --groups groups.yaml --output new.xml"): "import",
    ("docs/import.md", "pnp-service import devices.yaml --groups groups.yaml                          # check only"):
        "import",
    ("docs/import.md", "pnp-service import devices.csv --groups groups.yaml --output pnp-datastore.xml"): "import",
    ("docs/import.md", "$ pnp-service claim FOC2301X0ZZ --datastore pnp-datastore.xml --groups groups.yaml --group site-north --hostname north-acc-09"):
        "import",
    ("docs/import.md", "pnp-service claim FOC2301X0ZZ --datastore pnp-datastore.xml --groups groups.yaml \\"): "import",
    ("docs/security.md", "cat crca2048.pem ACT2SUDICA.pem ecrca.pem ACT2ECCSUDICA.pem crca2099.pem hasudi.pem > cisco-sudi-ca.pem"):
        "sudi",
    ("docs/security.md", "pnp-service sudi-lab lab --device FOC2001X0AB:C9300-24P"): "sudi",
    ("docs/protocol.md", "pnp-service serve --datastore ds.xml --port 80 \\"): "https",
    ("docs/location.md", "pnp-service check --datastore location-datastore.xml"): "location",
    ("docs/location.md", "pnp-service agent --url http://127.0.0.1:8080 --serial FOC2419L0CA --neighbor "
                         "DIST-SW-1.campus.example.net:GigabitEthernet1/0/48 --time-scale 0"): "location",
}


def claimed() -> dict[tuple[str, str], str]:
    return {**ELSEWHERE, **HERE, **CONTROLLER}


#: Blocks of the controller's docs, run on a real controller by tests/integration/test_docs_controller.py.
SOCKET = "/usr/local/var/run/controller/controller.sock"
CONTROLLER: dict[tuple[str, str], str] = {
    ("docs/controller.md", "git clone https://github.com/clicon/clixon-pyapi.git"):
        "exempt: fetches from GitHub; the lab installs clixon-pyapi from its checkout the same way",
    ("docs/controller.md", "sudo ./install.sh --controller --python /usr/bin/python3"): "controller: install",
    ("docs/controller.md", "clixon_backend -f /usr/local/etc/clixon/controller.xml -z"): "controller: install",
    ("docs/controller.md", f"pnp-service serve --clixon-socket {SOCKET} --port 80"): "controller: walkthrough",
    ("docs/controller.md", "configure / set services pnp-device FOC2001X0AB pid C9300-24P"): "controller: walkthrough",
    ("docs/controller.md", "set services pnp-device FOC2001X0AB variable secret value change-me"):
        "controller: walkthrough",
    ("docs/controller.md", "show configuration pnp device FOC2001X0AB"): "controller: walkthrough",
    ("docs/controller.md", f"pnp-service status --clixon-socket {SOCKET}"): "controller: walkthrough",
    ("docs/controller.md", "configure / apply services pnp-service:pnp-device FOC2001X0AB"): "controller: walkthrough",
    ("docs/controller.md", f"pnp-service reset --clixon-socket {SOCKET} FOC2001X0AB"): "controller: walkthrough",
    ("docs/controller.md", "configure / delete pnp device FOC2001X0AB status"): "controller: walkthrough",
    ("docs/controller.md", "show pnp"): "controller: walkthrough",
    ("docs/controller.md", "pnp reset FOC2001X0AB"): "controller: walkthrough",
    ("docs/controller.md", "configure / set services pnp-device FOC2001X0AB controller user netconf"):
        "controller: hand-off",
    ("docs/controller.md", f"pnp-service serve --clixon-socket {SOCKET} --known-hosts /root/.ssh/known_hosts"):
        "controller: hand-off",
    ("docs/controller.md", "pnp-service agent --url http://127.0.0.1:8080 --device FOC2001X0AB:C9300-24P --ssh-host-key "
                           "/etc/ssh/ssh_host_ed25519_key.pub --time-scale 0"): "controller: hand-off",
    ("docs/controller.md", "show configuration pnp device FOC2001X0AB status handoff"): "controller: hand-off",
    ("docs/controller.md", "printf 'hostname {{ hostname }}\\nend\\n' | sudo tee "
                           "/usr/local/share/pnp-service/templates/access.j2"): "controller: claim",
    ("docs/controller.md", "pnp claim FOC2001X0CD hostname access-sw-02 template-file access.j2"): "controller: claim",
    ("docs/controller.md", "show pnp claims"): "controller: claim",
    ("docs/protocol.md", "set services pnp-device FOC2201X0T1 stack members 3"): "controller: stack",
    ("docs/steps.md", "set services pnp-device FOC2001X0AB step banner type cli-config"):
        "controller: extra step",
    ("docs/operations.md", f"pnp-service status --clixon-socket {SOCKET} --format json"): "controller: walkthrough",
    ("README.md", "sudo ./install.sh --controller --python /usr/bin/python3     # package, YANG, service module"):
        "controller: install",
    ("docs/location.md", "set services pnp-location dist-sw-1 Gi1/0/48 hostname access-sw-7"): "controller: location",
}


def command_blocks() -> list[docs.Block]:
    return [block for block in docs.blocks() if docs.shell_lines(block) or docs.clixon_lines(block)]


def test_every_command_block_is_claimed():
    unclaimed = [f"{b.file}:{b.line}: {b.lines[0]}" for b in command_blocks() if docs.key(b) not in claimed()]
    assert not unclaimed, "command blocks no test runs (claim them in tests/test_docs.py):\n" + "\n".join(unclaimed)
    existing = {docs.key(b) for b in command_blocks()}
    stale = [f"{file}: {first}" for file, first in claimed() if (file, first) not in existing]
    assert not stale, "claims of blocks the docs no longer have:\n" + "\n".join(stale)


@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(tmp_path)
    yield box
    box.close()


def lines(file: str, starts: str) -> list[str]:
    return docs.shell_lines(find(file, starts))


def output_of(file: str, starts: str) -> list[str]:
    """The lines of a ``$ command`` block that are its output."""
    return [line for line in find(file, starts).lines[1:] if line.strip()]


def assert_table_like(shown: str, documented: list[str]) -> None:
    """The table has the documented header, rows (serial, state, hostname, pid) and totals line."""
    rows = shown.strip().splitlines()
    assert rows[0].split() == documented[0].split()
    assert rows[-1] == documented[-1]
    columns = [row.split()[:4] for row in rows[1:-1]]
    for expected in documented[1:-1]:
        assert expected.split()[:4] in columns, f"{expected} not in\n{shown}"


# --------------------------------------------------------------------------- the quick start


def test_quick_start_serve_play_look_reset(sandbox):
    readme = docs.find("README.md", "./install.sh && .venv/bin/pnp-service serve").lines[0]
    serve = readme.split("&&", 1)[1].strip()  # ./install.sh itself: .ci/run, in a fresh clone
    sandbox.run("pnp-service init pnp-datastore.xml")
    sandbox.serve(serve)
    agent, status = lines("README.md", ".venv/bin/pnp-service agent")
    played = sandbox.run(agent)
    assert played.stdout.splitlines()[-1] == "1 backed-off, 1 configured"
    documented = [line for line in find("README.md", ".venv/bin/pnp-service agent").lines[3:] if line.strip()]
    assert_table_like(sandbox.run(status).stdout, documented)
    (check,) = lines("docs/embedded.md", "$ pnp-service status")
    assert_table_like(sandbox.run(check).stdout, output_of("docs/embedded.md", "$ pnp-service status"))
    (healthz,) = lines("docs/operations.md", "curl -s http://127.0.0.1:8080/healthz")
    assert json.loads(sandbox.run(healthz).stdout) == json.loads(output_of("docs/operations.md", "curl -s")[0])
    watch = lines("docs/operations.md", "pnp-service status --datastore pnp-datastore.xml --watch")[0]
    watched = sandbox.interrupt(watch)
    assert watched.returncode == 0 and "FOC2001X0AB" in watched.stdout
    (timeline,) = lines("docs/operations.md", "pnp-service status --datastore pnp-datastore.xml FOC2001X0AB")
    from conftest import wait_until

    # The timeline is written behind the answers (a quarter of a second later, more on a loaded machine).
    def provisioned_in_timeline() -> str | None:
        out = sandbox.run(timeline).stdout
        return out if "provisioned" in out else None

    told = wait_until(provisioned_in_timeline, 10, "the timeline written")
    assert told.index("request") < told.index("step=device-info") < told.rindex("provisioned"), told
    (reset,) = lines("docs/embedded.md", "pnp-service reset")
    assert "starts over" in sandbox.run(reset).stdout
    assert " planned " in sandbox.run(status).stdout.splitlines()[1]


# --------------------------------------------------------------------------- the roll-out page


def test_rollout_page_on_its_own_port_and_with_a_token(sandbox):
    import urllib.error
    import urllib.request

    sandbox.run("pnp-service init pnp-datastore.xml")
    (serve,) = lines("docs/operations.md", "pnp-service serve --datastore pnp-datastore.xml --port 8080 --ui 8081")
    local = sandbox.serve(serve)
    with urllib.request.urlopen("http://127.0.0.1:8081/api/rollout", timeout=5) as answer:
        assert json.load(answer)["totals"]["declared"] == 2
    local.terminate()
    local.wait(15)
    token, remote = lines("docs/operations.md", "head -c 24 /dev/urandom | base64 > ui.token")
    sandbox.run(token)
    assert oct(os.stat(os.path.join(sandbox.folder, "ui.token")).st_mode & 0o777) == "0o600"
    sandbox.serve(remote)
    secret = open(os.path.join(sandbox.folder, "ui.token")).read().strip()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen("http://127.0.0.1:8081/api/rollout", timeout=5)
    assert refused.value.code == 401
    request = urllib.request.Request("http://127.0.0.1:8081/api/rollout", headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.load(answer)["totals"]["declared"] == 2


# --------------------------------------------------------------------------- embedded mode


def test_embedded_init_check_render_serve_and_a_typo(sandbox):
    init, check, render, serve = lines("docs/embedded.md", "pnp-service init pnp-datastore.xml")
    assert "wrote pnp-datastore.xml" in sandbox.run(init).stdout
    assert oct(os.stat(os.path.join(sandbox.folder, "pnp-datastore.xml")).st_mode & 0o777) == "0o600"
    assert "2 devices declared, 2 planned, 0 with errors" in sandbox.run(check).stdout
    assert "hostname access-sw-01" in sandbox.run(render).stdout
    sandbox.serve(serve)
    # The typo the doc shows: <image> of the second device written <imgae>.
    path = os.path.join(sandbox.folder, "pnp-datastore.xml")
    text = open(path).read()
    second = text.index("FOC2001X0CD")
    broken = text[:second] + text[second:].replace("<image>", "<imgae>", 1).replace("</image>", "</imgae>", 1)
    open(path, "w").write(broken)
    (typo_check,) = lines("docs/embedded.md", "$ pnp-service check")
    result = sandbox.run(typo_check, ok=False)
    assert result.returncode == 1
    documented = output_of("docs/embedded.md", "$ pnp-service check")
    shown = [line.strip() for line in result.stderr.splitlines()]
    assert documented[0].strip() in shown[0] and documented[1].strip() in " ".join(shown)


# --------------------------------------------------------------------------- import and claim


def import_files(box: Sandbox, *, controller_templates: bool = False) -> None:
    """The files import.md shows: groups.yaml and devices.yaml (its YAML, split where it says), devices.csv,
    templates/access.j2."""
    yaml = next(b for b in docs.blocks(["docs/import.md"]) if b.language == "yaml").text
    split = yaml.index("\ndevices:")
    box.write("groups.yaml", yaml[:split])
    box.write("devices.yaml", yaml[split + 1:])
    box.write("devices.csv", next(b for b in docs.blocks(["docs/import.md"]) if b.language == "csv").text)
    box.write("templates/access.j2", next(b for b in docs.blocks(["docs/import.md"]) if b.language == "jinja").text)


def play(box: Sandbox, *serials: str) -> str:
    """Simulated agents against the listener the docs start (not a documented line: the scenario's devices)."""
    flags = " ".join(f"--serial {serial}" for serial in serials)
    return box.run(f"pnp-service agent --url http://127.0.0.1:8080 {flags} --time-scale 0", ok=False).stdout


def test_import_a_yaml_list_check_it_write_it_serve_it(sandbox):
    import_files(sandbox)
    check, write, serve = lines("docs/import.md", "pnp-service import devices.yaml --groups groups.yaml")
    assert "2 devices, valid and planned; nothing written" in sandbox.run(check).stdout
    sandbox.run(write)
    sandbox.serve(serve)
    assert play(sandbox, "FOC2301N0AA").splitlines()[-1] == "1 configured"
    # Adding the CSV's devices to it: what "Into an existing file" shows.
    merged = sandbox.run("pnp-service import devices.csv --groups groups.yaml --output pnp-datastore.xml --merge")
    assert merged.stdout.strip() == find("docs/import.md", "merged into").lines[0].strip()


def test_import_a_csv_list_and_claim_a_device_that_called_in(sandbox):
    import_files(sandbox)
    check, write, clixon, claim = lines("README.md", "pnp-service import devices.csv --groups groups.yaml")
    assert "3 devices, valid and planned" in sandbox.run(check).stdout
    sandbox.run(write)
    (documented,) = lines("docs/import.md", "pnp-service import devices.csv --groups groups.yaml --output")
    assert documented == write  # the same command on both pages
    sandbox.env["PNP_TEMPLATE_DIRS"] = os.path.join(sandbox.folder, "templates")  # the controller's template folder
    sandbox.run(clixon)
    script = open(os.path.join(sandbox.folder, "devices.cli")).read().splitlines()
    assert script[0].startswith("# pnp-service import devices.yaml: 2 devices") and script[-1] == "commit"
    # The script "The outputs" shows, of the CSV list: its first lines as printed.
    shown = [line for line in find("docs/import.md", "# pnp-service import devices.csv").lines if line != "..."]
    printed = sandbox.run("pnp-service import devices.csv --groups groups.yaml --clixon-cli").stdout.splitlines()
    assert printed[:len(shown) - 1] == shown[:-1] and printed[-1] == shown[-1]
    sandbox.serve("pnp-service serve --datastore pnp-datastore.xml")
    play(sandbox, "FOC2301X0ZZ")  # calls in undeclared: unclaimed
    (refused,) = lines("docs/import.md", "$ pnp-service claim")
    result = sandbox.run(refused, ok=False)
    assert result.returncode == 1 and result.stderr.splitlines() == output_of("docs/import.md", "$ pnp-service claim")
    sandbox.run(claim)
    assert play(sandbox, "FOC2301X0ZZ").splitlines()[-1] == "1 configured"
    declared = sandbox.run("pnp-service render --datastore pnp-datastore.xml FOC2301X0ZZ").stdout
    assert "hostname north-acc-09" in declared and "ip address 192.0.2.19" in declared


def test_claim_with_two_groups_into_the_file(sandbox):
    import_files(sandbox)
    sandbox.run("pnp-service import devices.yaml --groups groups.yaml --output pnp-datastore.xml")
    sandbox.serve("pnp-service serve --datastore pnp-datastore.xml")
    play(sandbox, "FOC2301X0ZZ")
    (claim,) = lines("docs/import.md", "pnp-service claim FOC2301X0ZZ --datastore pnp-datastore.xml --groups")
    assert "1 added" in sandbox.run(claim).stdout
    assert "power inline police" in sandbox.run("pnp-service render --datastore pnp-datastore.xml FOC2301X0ZZ").stdout


def test_a_broken_list_is_refused_line_by_line_as_shown(sandbox):
    import_files(sandbox)
    header = open(os.path.join(sandbox.folder, "devices.csv")).read().splitlines()[0]
    sandbox.write("broken.csv", "\n".join([
        header,
        "FOC2301N0AA,C9300-24P,north-acc-01,site-north,192.0.2.11,two",
        "FOC2301N0AB,,north-acc-02,site-nrth,192.0.2.12,2",
        "FOC2301N0AA,,north-acc-03,site-north,192.0.2.13,2",
    ]))
    (command,) = lines("docs/import.md", "$ pnp-service import broken.csv")
    result = sandbox.run(command, ok=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == output_of("docs/import.md", "$ pnp-service import broken.csv")
    assert not os.path.exists(os.path.join(sandbox.folder, "new.xml"))


# --------------------------------------------------------------------------- security, HTTPS


def example_with(box: Sandbox, name: str, extra: str) -> None:
    """``pnp-service init``'s example, FOC2001X0AB declared with ``extra`` (the file the page tells you to write)."""
    box.run(f"pnp-service init {name}")
    path = os.path.join(box.folder, name)
    text = open(path).read()
    first = text.index("</pnp-device>")
    open(path, "w").write(text[:first] + extra + text[first:])


def test_sudi_with_cisco_cas_and_in_the_lab(sandbox):
    from pnp_service.simulator.lab_pki import LabCa

    example_with(sandbox, "ds.xml", "<authentication>sudi</authentication>")
    cat, check, serve = lines("docs/security.md", "cat crca2048.pem")
    for name in re.findall(r"\S+\.pem", cat.split(">")[0]):  # stand-ins for the files Cisco's PKI page gives
        sandbox.write(name, LabCa.create(name).bundle().decode())
    sandbox.run(cat)
    assert "2 devices declared, 2 planned, 0 with errors" in sandbox.run(check).stdout
    sandbox.serve(serve)
    sandbox.close()
    lab, serve, agent = lines("docs/security.md", "pnp-service sudi-lab lab")
    sandbox.run(lab)
    sandbox.serve(serve)
    played = sandbox.run(agent + " --time-scale 0")  # the page's agent waits out its backoffs: not needed here
    assert "device-auth" in played.stdout and played.stdout.splitlines()[-1] == "1 configured"


@pytest.mark.skipif(os.geteuid() != 0, reason="the page's HTTP listener takes port 80, which needs root")
def test_https_from_day_0_two_listeners(sandbox, tmp_path):
    from test_real_switches import lab_pki

    pki = lab_pki(tmp_path)
    sandbox.write("ca.pem", pki["ca"].read_text())
    sandbox.write("pnp.pem", pki["cert"].read_text())
    sandbox.write("pnp.key", pki["key"].read_text())
    sandbox.run("pnp-service init ds.xml")
    http, https = lines("docs/protocol.md", "pnp-service serve --datastore ds.xml --port 80")
    sandbox.serve(http)
    sandbox.serve(https)


# --------------------------------------------------------------------------- declarations by location


def test_location_declare_check_serve_and_two_switches_at_one_port(sandbox):
    example = find("docs/location.md", "<config>")
    sandbox.write("location-datastore.xml", "\n".join(example.lines) + "\n")
    check, serve = lines("docs/location.md", "pnp-service check --datastore location-datastore.xml")
    assert "(and 1 by location)" in sandbox.run(check).stdout
    sandbox.serve(serve)
    first, second = lines("docs/location.md", "pnp-service agent --url http://127.0.0.1:8080 --serial FOC2419L0CA")
    assert sandbox.run(first).stdout.splitlines()[-1] == "1 configured"
    assert sandbox.run(second).stdout.splitlines()[-1] == "1 backed-off"
    shown = sandbox.run("pnp-service status --datastore location-datastore.xml").stdout
    bound = next(line for line in shown.splitlines() if line.startswith("FOC2419L0CA"))
    refused = next(line for line in shown.splitlines() if line.startswith("FOC2419L0CB"))
    assert "provisioned" in bound and "access-sw-7" in bound
    assert "unclaimed" in refused and "bound to FOC2419L0CA" in refused
