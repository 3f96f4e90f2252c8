"""Reading README.md and docs/*.md as a user does, and running what they say to paste.

A code block (indented four spaces, or fenced) holds shell commands, lines to paste into ``clixon_cli``, a
file's content, or output.  ``blocks()`` finds them; ``shell_lines`` and ``clixon_lines`` give the commands a user
would paste, continuation lines joined and ``$ `` prompts dropped; :class:`Sandbox` runs them as written in a
folder of their own, with this checkout's ``.venv/bin`` first on PATH (the docs name ``pnp-service`` bare, as
after ``./install.sh``, and ``.venv/bin/pnp-service``, as from the checkout).
"""

from __future__ import annotations

import dataclasses
import glob
import http.client
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))

#: Programs a shell line of the docs starts with (after ``sudo`` and ``VAR=value`` words).
PROGRAMS = {"pnp-service", "python", "python3", "pip", "install.sh", "curl", "install", "docker", "systemctl",
            "journalctl", "clixon_cli", "clixon_backend", "cat", "git", "useradd", "cp", "cd", "chown", "apt-get",
            "sudoedit", "run.py", "openssl", "mkdir", "export", "head", "printf"}
#: What a line pasted into clixon_cli starts with.
CLIXON_WORDS = ("configure", "set ", "delete ", "commit", "show ", "apply ", "discard", "exit", "pnp ")


@dataclasses.dataclass(frozen=True)
class Block:
    file: str
    line: int
    text: str
    language: str = ""  # of a fenced block

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")


def blocks(files: list[str] | None = None) -> list[Block]:
    found = []
    for name in files or DOCS:
        lines = open(os.path.join(REPO, name), encoding="utf-8").read().split("\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                end = i + 1
                while end < len(lines) and not lines[end].startswith("```"):
                    end += 1
                found.append(Block(name, i + 2, "\n".join(lines[i + 1:end]), line[3:].strip()))
                i = end + 1
                continue
            if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
                end = i
                while end < len(lines) and (lines[end].startswith("    ")
                                            or (not lines[end].strip() and end + 1 < len(lines)
                                                and lines[end + 1].startswith("    "))):
                    end += 1
                found.append(Block(name, i + 1, "\n".join(text[4:] for text in lines[i:end])))
                i = end
                continue
            i += 1
    return found


def _joined(block: Block) -> list[str]:
    out: list[str] = []
    for line in block.lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def program(line: str) -> str:
    words = line.strip()
    if words.startswith("$ "):
        words = words[2:]
    parts = words.split()
    while parts and (parts[0] == "sudo" or re.fullmatch(r"[A-Z_]+=\S*", parts[0])):
        parts = parts[1:]
    return os.path.basename(parts[0]) if parts else ""


def shell_lines(block: Block) -> list[str]:
    """The shell commands of a block, as a user pastes them ($ prompts dropped, continuations joined)."""
    if block.language not in ("", "sh", "shell", "console"):
        return []
    joined = _joined(block)
    if any(line.startswith("$ ") for line in joined):  # a session: the prompted lines are the commands
        return [line[2:] for line in joined if line.startswith("$ ") and program(line) in PROGRAMS]
    return [line.strip() for line in joined if program(line) in PROGRAMS]


def clixon_lines(block: Block) -> list[str]:
    """The lines of a block meant for clixon_cli (a block that starts with one)."""
    if block.language or not block.lines or not block.lines[0].startswith(CLIXON_WORDS):
        return []
    return [line for line in block.lines if line.startswith(CLIXON_WORDS)]


def find(file: str, starts: str) -> Block:
    """The block of ``file`` whose first line starts with ``starts``."""
    for block in blocks([file]):
        if block.lines and block.lines[0].strip().startswith(starts):
            return block
    raise AssertionError(f"{file} has no block starting {starts!r}: the docs changed, change the test with them")


def key(block: Block) -> tuple[str, str]:
    """How a block is named in claims: its file and first line (and second, after a bare ``configure``)."""
    first = block.lines[0].strip()
    if first == "configure" and len(block.lines) > 1:
        first += " / " + block.lines[1].strip()
    return (block.file, first)


def find_key(file: str, first: str) -> Block:
    for block in blocks([file]):
        if block.lines and key(block) == (file, first):
            return block
    raise AssertionError(f"{file} has no block {first!r}: the docs changed, change the test with them")


# --------------------------------------------------------------------------- running


def wait_for_hello(host: str, port: int, timeout: float = 30.0, tls: bool = False) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if tls:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=2,
                                                                                     context=context)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=2)
            connection.request("GET", "/pnp/HELLO")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answered HELLO on {host}:{port}")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Sandbox:
    """A folder to run documented commands in, as written, with this checkout's .venv."""

    def __init__(self, folder, env: dict[str, str] | None = None, link_venv: bool = True):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        if link_venv:
            os.symlink(os.path.join(REPO, ".venv"), os.path.join(self.folder, ".venv"))
        self.env = {**os.environ, "PATH": os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ["PATH"],
                    **(env or {})}
        self.ran: list[str] = []
        self.background: list[subprocess.Popen] = []

    def write(self, name: str, text: str, mode: int = 0o600) -> str:
        path = os.path.join(self.folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        os.chmod(path, mode)
        return path

    def run(self, line: str, ok: bool = True, timeout: float = 180, stdin: str | None = None, cwd: str = ""
            ) -> subprocess.CompletedProcess:
        """Run a documented line with bash, as written (in ``cwd``, else the sandbox); ``ok``: it must exit 0."""
        self.ran.append(line)
        result = subprocess.run(["bash", "-c", line], cwd=cwd or self.folder, env=self.env, capture_output=True,
                                text=True, timeout=timeout, input=stdin)
        if ok:
            assert result.returncode == 0, f"{line}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def serve(self, line: str) -> subprocess.Popen:
        """Start a documented ``pnp-service serve`` line in the background; returns once it answers HELLO."""
        self.ran.append(line)
        words = shlex.split(line)
        port = int(words[words.index("--port") + 1]) if "--port" in words else 8080
        host = words[words.index("--host") + 1] if "--host" in words else "127.0.0.1"
        host = "127.0.0.1" if host == "0.0.0.0" else host
        assert port_free(port, host), f"port {port} is taken: the documented command cannot run here"
        log = open(os.path.join(self.folder, f"serve-{len(self.background)}.log"), "wb")
        server = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.folder, env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT)
        self.background.append(server)
        try:
            wait_for_hello(host, port, tls="--tls-cert" in words)
        except AssertionError:
            server.kill()
            raise AssertionError(f"{line} did not start: {open(log.name).read()[-2000:]}") from None
        return server

    def interrupt(self, line: str, after: float = 3.0) -> subprocess.CompletedProcess:
        """Run a line that runs until Ctrl-C (``--watch``), and press it."""
        self.ran.append(line)
        process = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.folder, env=self.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(after)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
        return subprocess.CompletedProcess(line, process.returncode, out, err)

    def close(self) -> None:
        for server in self.background:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
