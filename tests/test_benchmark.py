"""bench/run.py keeps working: the whole benchmark, with small numbers (its figures are not asserted here: speed is
measured by running it, as ratios to a baseline of the same run, never by a timed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import docs_harness as docs
from conftest import REPO

pytestmark = pytest.mark.heavy


def test_benchmark_runs_with_small_numbers(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--devices", "200", "--provision", "20", "--seconds", "2", "--rounds", "1",
         "--clients", "4", "--plan-sizes", "20", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["what"]: row for row in json.loads(out.read_text())["rows"]}
    for model in ("event loop", "gunicorn threads"):
        steady = next(row for what, row in rows.items() if what.startswith(f"embedded on {model}, 200 declared"))
        assert steady["requests"] > 0 and steady["ratio"] > 0
        assert any(what.startswith(f"embedded on {model}: poll of a provisioned device while") for what in rows)
    provisioned = next(row for what, row in rows.items() if "full provisioning of 20 devices" in what)
    assert provisioned["configured"] == 20
    assert "| measurement |" in result.stdout


SMALL = "--devices 200 --provision 20 --seconds 2 --rounds 1 --clients 4 --plan-sizes 20 --servers event"


def test_benchmark_puts_another_server_in_the_same_rounds(tmp_path):
    """docs/benchmark.md's --also example, pasted as written, small numbers added."""
    line = docs.shell_lines(docs.find("docs/benchmark.md", ".venv/bin/python bench/run.py --also"))[0]
    assert os.path.exists(os.path.join(REPO, ".venv/bin/pnp-service")), "the docs' commands run from ./install.sh's .venv"
    out = tmp_path / "bench.json"
    result = subprocess.run(["bash", "-c", f"{line} {SMALL} --json {out}"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["what"]: row for row in json.loads(out.read_text())["rows"]}
    twin = {what: row for what, row in rows.items() if what.startswith("--also twin")}
    assert len(twin) == 4
    steady = next(row for what, row in twin.items() if "poll of a provisioned device" in what)
    assert steady["requests"] > 0 and steady["ratio"] > 0 and steady["rss_mib"] > 10
    provisioning = next(row for what, row in twin.items() if "full provisioning of 20 devices" in what)
    assert provisioning["configured"] == 20  # the twin served the same declarations
    assert "| --also twin: poll of an unclaimed device |" in result.stdout


def test_an_also_server_that_does_not_start_is_named(tmp_path):
    result = subprocess.run([sys.executable, "bench/run.py", *SMALL.split(), "--also", "broken=exit 3"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--also broken exited with 3 before it answered" in result.stderr
    result = subprocess.run([sys.executable, "bench/run.py", "--also", "no command"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "NAME='command that serves on $PORT'" in result.stderr
