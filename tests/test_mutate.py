"""tools/mutate.py, the mutation run of docs/mutation.md, on a ten-line module and a test that kills half its mutants."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "mutate.py")

MODULE = '''"""A module to mutate: the docstring is left alone."""
import logging

log = logging.getLogger(__name__)
LIMIT = 10  # pragma: no mutate


def sign(n: int) -> int:
    log.info("sign of %d", n)
    if n > 0:
        return 1
    return 0
'''
#: Kills the mutants of ``n > 0`` (-> ``n <= 0``), ``return 1`` (-> None) and ``1`` (-> 2); not those of the ``0`` in
#: ``n > 0`` (-> 1), ``return 0`` (-> None) and its ``0`` (-> 1): nothing checks a number below one.
TEST = '''from tiny import sign


def test_a_positive_number():
    assert sign(5) == 1
'''


def load_tool():
    spec = importlib.util.spec_from_file_location("mutate_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    sys.modules["mutate_tool"] = tool  # dataclasses look their module up there
    spec.loader.exec_module(tool)
    return tool


def test_mutants_found_and_those_left_alone():
    tool = load_tool()
    source = MODULE.encode()
    found = tool.find_mutants(source)
    kinds = [(m.line, m.kind) for m in found]
    # Not the docstring, the annotations, the logging call, nor the line with the pragma.
    assert kinds == [(10, "> -> <="), (10, "0 -> 1"), (11, "return X -> return None"),
                     (11, "1 -> 2"), (12, "return X -> return None"), (12, "0 -> 1")]
    assert tool.line_of(tool.apply(source, found[0]), found[0].start) == "if (n <= 0):"
    # Each mutant changes only its own line.
    for mutant in found:
        before, after = source.split(b"\n"), tool.apply(source, mutant).split(b"\n")
        assert len(before) == len(after)
        assert [i + 1 for i, (a, b) in enumerate(zip(before, after)) if a != b] == [mutant.line]
    # A sample is the same for the same seed, and a sample of the mutants.
    picked = tool.choose(found, 3, 7)
    assert picked == tool.choose(found, 3, 7) and len(picked) == 3 and set(picked) <= set(found)
    assert len(tool.choose(found, 3, None)) == 3 and tool.choose(found, 99, 7) == found


def test_a_run_kills_some_mutants_and_restores_the_module(tmp_path):
    module = tmp_path / "tiny.py"
    module.write_text(MODULE)
    (tmp_path / "test_tiny.py").write_text(TEST)
    os.utime(module, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    before = module.read_bytes()
    done = subprocess.run([sys.executable, TOOL, "tiny.py", "--tests", "test_tiny.py", "--json", "out.json",
                           "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert module.read_bytes() == before and module.stat().st_mtime_ns == 1_700_000_000_000_000_000
    report = json.loads((tmp_path / "out.json").read_text())
    assert (report["found"], report["mutants"]) == (6, 6)
    assert report["killed"] + report["timeouts"] + report["survived"] == report["mutants"]
    killed = {(r["line"], r["kind"]) for r in report["results"] if r["outcome"] == "killed"}
    survived = {(r["line"], r["kind"]) for r in report["results"] if r["outcome"] == "survived"}
    assert killed == {(10, "> -> <="), (11, "return X -> return None"), (11, "1 -> 2")}
    assert survived == {(10, "0 -> 1"), (12, "return X -> return None"), (12, "0 -> 1")}
    # The summary names each survivor with its line before and after.
    assert "tiny.py: 6 mutants of 6 found; 3 killed, 0 timeouts (counted as killed), 3 survived" in done.stdout
    assert "tiny.py:12: return 0 -> return None" in done.stdout
    assert "tiny.py:10: if n > 0: -> if n > 1:" in done.stdout


def test_tests_that_do_not_import_the_module_are_refused(tmp_path):
    (tmp_path / "tiny.py").write_text(MODULE)
    (tmp_path / "test_other.py").write_text("def test_nothing():\n    assert True\n")
    done = subprocess.run([sys.executable, TOOL, "tiny.py", "--tests", "test_other.py", "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "do not import this file" in done.stderr
    assert (tmp_path / "tiny.py").read_text() == MODULE


def test_the_documented_runs_name_modules_and_tests_that_exist():
    import shlex

    import docs_harness as docs

    commands = docs.shell_lines(docs.find("docs/mutation.md", ".venv/bin/python tools/mutate.py"))
    assert len(commands) == 6
    parser = load_tool().build_parser()
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == [".venv/bin/python", "tools/mutate.py"]
        args = parser.parse_args(words[2:])
        for path in [args.module, *args.tests]:
            assert os.path.isfile(os.path.join(REPO, path)), f"{command}: no {path}"
