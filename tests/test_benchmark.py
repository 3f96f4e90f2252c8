"""bench/run.py keeps working: the whole benchmark, with small numbers (its figures are not asserted here: speed is
measured by running it, as ratios to a baseline of the same run, never by a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
