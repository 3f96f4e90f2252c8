#!/usr/bin/env python3
"""A small mutation run: change one thing in a module, run its fast tests, see whether they notice.

This tool owns the mutation run described in docs/mutation.md, and nothing else: it makes mutants of one
module with :mod:`ast` (stdlib only, no mutmut), writes each over the module in turn, runs the given test files
with ``python -m pytest -x -q -n 0 -p no:randomly`` and reports which mutants the tests killed and which survived.
It is a report, not a gate: it exits 0 whatever survives (2 when the tests fail on the unchanged module, or do not
import the module at all).

Mutants, one change each:

* comparison operators: ``==``/``!=``, ``<``/``>=``, ``>``/``<=``, ``in``/``not in``, ``is``/``is not``
* ``and``/``or``; ``not x`` -> ``x``; ``True``/``False``; an integer ``n`` -> ``n + 1``
* ``return X`` -> ``return None`` (X not ``None``)
* a statement that is a bare call, ``foo(...)``, deleted (replaced by ``pass``)

Left alone: docstrings, type annotations, ``__all__``, logging calls (``log.*``, ``logger.*``, ``logging.*``,
``event(...)``), f-strings, and any line marked ``# pragma: no mutate``.

Each mutant replaces only the source text of the node it changes, so the rest of the file (comments, line
numbers) stays as it is.  The original file is written back byte for byte (and its modification time restored, so
no stale bytecode is ever taken for it) after every mutant, in a ``finally``: also on Ctrl-C or SIGTERM.  Test runs
write no bytecode (PYTHONDONTWRITEBYTECODE=1).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

PRAGMA = "# pragma: no mutate"
COMPARE_SWAPS = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
                 ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
LOGGER_NAMES = {"log", "logger", "logging", "LOG", "_log", "_logger"}
LOGGING_FUNCTIONS = {"event"}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One change: the byte range [start, end) of the source replaced by ``text``."""

    line: int
    start: int
    end: int
    text: bytes
    kind: str


@dataclasses.dataclass
class Result:
    file: str
    line: int
    kind: str
    original: str
    mutant: str
    outcome: str  # killed | survived | timeout (a timeout counts as killed)
    seconds: float


# --------------------------------------------------------------------------- finding mutants


def _is_logging_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in LOGGING_FUNCTIONS
    if isinstance(func, ast.Attribute):
        owner = func.value
        if isinstance(owner, ast.Attribute):  # self.log.info(...)
            return owner.attr in LOGGER_NAMES
        return isinstance(owner, ast.Name) and owner.id in LOGGER_NAMES
    return False


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            and isinstance(parent, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and bool(parent.body) and parent.body[0] is node)


def _is_dunder_all(node: ast.AST) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
        node, (ast.AnnAssign, ast.AugAssign)) else []
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


def _children(node: ast.AST):
    """The child nodes to look into: not annotations, not f-strings' parts, not ``__all__``, not logging calls."""
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns", "type_comment", "type_params"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield child


class _Finder:
    def __init__(self, source: bytes):
        self.source = source
        self.lines = source.split(b"\n")
        self.offsets = [0]
        for line in self.lines:
            self.offsets.append(self.offsets[-1] + len(line) + 1)
        self.mutants: list[Mutant] = []

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offsets[node.lineno - 1] + node.col_offset,
                self.offsets[node.end_lineno - 1] + node.end_col_offset)

    def skipped(self, node: ast.AST) -> bool:
        first, last = node.lineno, getattr(node, "end_lineno", node.lineno) or node.lineno
        return any(PRAGMA.encode() in self.lines[n - 1] for n in range(first, last + 1))

    def add(self, node: ast.AST, replacement: ast.AST | str, kind: str, wrap: bool = True) -> None:
        if self.skipped(node):
            return
        start, end = self.span(node)
        text = replacement if isinstance(replacement, str) else ast.unparse(replacement)
        if wrap:
            text = f"({text})"
        self.mutants.append(Mutant(node.lineno, start, end, text.encode(), kind))

    def visit(self, node: ast.AST, parent: ast.AST | None = None) -> None:
        if _is_docstring(node, parent) or _is_dunder_all(node) or _is_logging_call(node):
            return
        if isinstance(node, ast.Expr) and _is_logging_call(node.value):
            return
        if isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.AnnAssign) and node.value is None:
            return
        self.mutate(node)
        for child in _children(node):
            self.visit(child, node)

    def mutate(self, node: ast.AST) -> None:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                swap = COMPARE_SWAPS.get(type(op))
                if swap:
                    copy = _copy(node)
                    copy.ops[i] = swap()
                    self.add(node, copy, f"{_op(op)} -> {_op(swap())}")
        elif isinstance(node, ast.BoolOp):
            copy = _copy(node)
            copy.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.add(node, copy, f"{_op(node.op)} -> {_op(copy.op)}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.add(node, node.operand, "not x -> x")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            self.add(node, str(not node.value), f"{node.value} -> {not node.value}", wrap=False)
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            self.add(node, str(node.value + 1), f"{node.value} -> {node.value + 1}", wrap=False)
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            self.add(node, "return None", "return X -> return None", wrap=False)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            self.add(node, "pass", "call deleted", wrap=False)


def _copy(node: ast.AST) -> ast.AST:
    return ast.parse(ast.unparse(node), mode="eval").body


def _op(op: ast.AST) -> str:
    return {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.In: "in",
            ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.And: "and", ast.Or: "or"}[type(op)]


def find_mutants(source: bytes) -> list[Mutant]:
    """Every mutant of the module, in source order; each one still parses."""
    finder = _Finder(source)
    finder.visit(ast.parse(source))
    found = []
    for mutant in sorted(finder.mutants, key=lambda m: (m.start, m.end, m.kind)):
        try:
            ast.parse(apply(source, mutant))
        except SyntaxError:
            continue
        found.append(mutant)
    return found


def apply(source: bytes, mutant: Mutant) -> bytes:
    return source[:mutant.start] + mutant.text + source[mutant.end:]


def choose(mutants: list[Mutant], limit: int | None, seed: int | None) -> list[Mutant]:
    """A deterministic sample: ``limit`` at random with ``seed``, or else spread evenly over the module."""
    if limit is None or limit >= len(mutants):
        return mutants
    if seed is not None:
        picked = sorted(random.Random(seed).sample(range(len(mutants)), limit))
    else:
        picked = sorted({i * len(mutants) // limit for i in range(limit)})
    return [mutants[i] for i in picked]


def line_of(source: bytes, offset: int) -> str:
    start = source.rfind(b"\n", 0, offset) + 1
    end = source.find(b"\n", offset)
    return source[start:end if end >= 0 else len(source)].decode("utf-8", "replace").strip()


# --------------------------------------------------------------------------- running the tests


def run_tests(tests: list[str], timeout: float | None) -> tuple[str, float]:
    """``passed``, ``failed`` or ``timeout``, and the seconds it took."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:randomly", *tests]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    began = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        return "timeout", time.monotonic() - began
    except BaseException:
        _kill(process)
        raise
    return ("passed" if code == 0 else "failed"), time.monotonic() - began


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


class Restoring:
    """Writes sources over the module; gives the original back, bytes and modification time, on leaving."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            self.original = f.read()
        stat = os.stat(path)
        self.times = (stat.st_atime_ns, stat.st_mtime_ns)

    def write(self, source: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(source)

    def restore(self) -> None:
        self.write(self.original)
        os.utime(self.path, ns=self.times)

    def __enter__(self) -> "Restoring":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def mutate(path: str, tests: list[str], limit: int | None, seed: int | None, timeout: float | None,
           progress=None, lines: list[int] | None = None) -> dict:
    with Restoring(path) as module:
        source = module.original
        outcome, baseline = run_tests(tests, None)
        if outcome != "passed":
            raise SystemExit(f"mutate: the tests fail on the unchanged {path}; fix them first")
        if timeout is None:
            timeout = max(3 * baseline + 10, 20.0)
        # The tests must import this very file (not another copy on sys.path): a module that raises must fail.
        try:
            module.write(b"raise RuntimeError('mutate.py: is this module imported by the tests?')\n" + source)
            outcome, _ = run_tests(tests, timeout)
        finally:
            module.restore()
        if outcome == "passed":
            raise SystemExit(f"mutate: the tests pass with {path} raising on import: they do not import this file")
        every = [m for m in find_mutants(source) if not lines or m.line in lines]
        chosen = choose(every, limit, seed)
        results = []
        for n, mutant in enumerate(chosen, 1):
            mutated = apply(source, mutant)
            try:
                module.write(mutated)
                outcome, seconds = run_tests(tests, timeout)
            finally:
                module.restore()
            result = Result(path, mutant.line, mutant.kind, line_of(source, mutant.start),
                            line_of(mutated, mutant.start), {"passed": "survived", "failed": "killed"}.get(
                                outcome, outcome), round(seconds, 2))
            results.append(result)
            if progress:
                progress(n, len(chosen), result)
    with open(path, "rb") as f:
        assert f.read() == source, f"{path} was not restored"
    return {
        "module": path, "tests": tests, "seed": seed, "limit": limit, "timeout": round(timeout, 1),
        "baseline_seconds": round(baseline, 2), "found": len(every), "mutants": len(results),
        "killed": sum(r.outcome == "killed" for r in results),
        "timeouts": sum(r.outcome == "timeout" for r in results),
        "survived": sum(r.outcome == "survived" for r in results),
        "results": [dataclasses.asdict(r) for r in results],
    }


def summary(report: dict) -> str:
    out = [f"{report['module']}: {report['mutants']} mutants of {report['found']} found; "
           f"{report['killed']} killed, {report['timeouts']} timeouts (counted as killed), "
           f"{report['survived']} survived"]
    for r in report["results"]:
        if r["outcome"] == "survived":
            out.append(f"  {r['file']}:{r['line']}: {r['original']} -> {r['mutant']}")
    for r in report["results"]:
        if r["outcome"] == "timeout":
            out.append(f"  timeout (killed): {r['file']}:{r['line']}: {r['original']} -> {r['mutant']}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Mutate MODULE_PATH one change at a time and run the given tests against each mutant; "
                    "report the mutants they kill and those that survive. Exits 0 whatever survives.")
    parser.add_argument("module", metavar="MODULE_PATH", help="the Python file to mutate, e.g. pnp_service/sudi.py")
    parser.add_argument("--tests", nargs="+", required=True, metavar="TEST_FILE",
                        help="the test files (or node ids) pytest runs against each mutant")
    parser.add_argument("--limit", type=int, metavar="N", help="run N of the mutants found (default: all of them)")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="pick the --limit mutants at random with this seed (default: spread evenly)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="seconds a test run may take before it counts as a timeout, i.e. killed "
                             "(default: 3 x the unchanged run + 10, at least 20)")
    parser.add_argument("--lines", type=int, nargs="+", metavar="LINE",
                        help="only the mutants on these lines of the module (to re-run a survivor)")
    parser.add_argument("--json", metavar="OUT", help="also write the full report as JSON to OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress line per mutant")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    def progress(n: int, total: int, r: Result) -> None:
        print(f"[{n}/{total}] {r.outcome:8} {r.file}:{r.line}: {r.kind}", file=sys.stderr, flush=True)

    try:
        report = mutate(args.module, args.tests, args.limit, args.seed, args.timeout,
                        None if args.quiet else progress, args.lines)
    except KeyboardInterrupt:
        print(f"mutate: interrupted; {args.module} is restored", file=sys.stderr)
        return 130
    print(summary(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
