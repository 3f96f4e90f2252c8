"""The HTTP server a roll-out meets: slow, idle, broken and numerous clients never hold what others need.

Each test runs pnp_service.httpserver in a thread with short deadlines; test_rollout.py runs ``pnp-service serve``
with its defaults under a whole roll-out's load.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time

import pytest
from flask import Flask, Response, request

from pnp_service import httpserver
from pnp_service.httpserver import FileSpan, Limits, byte_range

FAST = Limits(request_timeout=1.0, keepalive_timeout=1.0, send_timeout=1.0, graceful_timeout=0.5, max_body_bytes=4096)


def make_app(image: str = "") -> Flask:
    app = Flask("test")
    release = threading.Event()

    @app.route("/ping", methods=["GET", "POST"])
    def ping() -> Response:
        return Response(b"pong" + request.get_data(), content_type="text/plain")

    @app.get("/slow")
    def slow() -> Response:
        release.wait(5)
        return Response(b"done", content_type="text/plain")

    @app.get("/file")
    def file() -> Response:
        handle = open(image, "rb")
        size = len(open(image, "rb").read())
        wanted = byte_range(request.headers.get("Range"), size)
        offset, length = wanted or (0, size)
        response = Response(FileSpan(handle, offset, length, on_close=app.config["closed"].append),
                            status=206 if wanted else 200, direct_passthrough=True, mimetype="application/octet-stream")
        response.headers["Content-Length"] = str(length)
        return response

    app.config["release"] = release
    app.config["closed"] = []
    return app


@pytest.fixture
def server(tmp_path):
    started = []

    def start(limits: Limits = FAST, image_bytes: int = 0):
        image = tmp_path / "image.bin"
        image.write_bytes(bytes(range(256)) * (image_bytes // 256))
        app = make_app(str(image))
        running = httpserver.start_in_thread(app, limits=limits)
        started.append((running, app))
        return running, app

    yield start
    for running, app in started:
        app.config["release"].set()
        running.stop()


def get(port: int, path: str = "/ping", timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raw(port: int, data: bytes, receive_buffer: int = 0) -> socket.socket:
    """A connection that sends ``data``; ``receive_buffer``: small, set before connecting, so that the window the
    server sees follows what this client reads (a slow link, not a big buffer filled at once)."""
    sock = socket.socket()
    sock.settimeout(5)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    if data:
        sock.sendall(data)
    return sock


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it said first."""
    began = time.monotonic()
    data = read_all(sock, seconds + 1)
    return time.monotonic() - began <= seconds + 0.5, data


# --------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize("partial", [
    b"",  # connects, sends nothing
    b"POST /ping HTTP/1.1\r\nHost: x\r\n",  # half the headers
    b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",  # half the body
])
def test_a_request_that_never_completes_is_closed_at_its_deadline_and_holds_nobody(server, partial):
    running, _ = server()
    held = [raw(running.port, partial) for _ in range(20)]  # more than the app has threads
    assert get(running.port) == (200, b"pong")  # answered while they hang
    closed, said = closed_within(held[0], FAST.request_timeout + 0.5)
    assert closed and said.startswith(b"HTTP/1.1 408")
    for sock in held:
        sock.close()


def test_a_trickle_of_bytes_does_not_extend_the_deadline(server):
    running, _ = server()
    sock = raw(running.port, b"POST /ping HTTP/1.1\r\n")
    stop = threading.Event()

    def trickle() -> None:  # one header byte every 0.2 s, forever
        while not stop.wait(0.2):
            try:
                sock.sendall(b"X")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    closed, said = closed_within(sock, FAST.request_timeout + 0.5)
    stop.set()
    assert closed and said.startswith(b"HTTP/1.1 408")


def test_an_idle_keep_alive_connection_is_closed(server):
    running, _ = server()
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    connection.request("GET", "/ping")
    assert connection.getresponse().read() == b"pong"
    closed, said = closed_within(connection.sock, FAST.keepalive_timeout + 0.5)
    assert closed and said == b""  # idle between requests: closed without a word


def test_keep_alive_serves_several_requests_on_one_connection(server):
    running, _ = server()
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    for n in range(3):
        connection.request("POST", "/ping", body=str(n).encode())
        assert connection.getresponse().read() == b"pong" + str(n).encode()
    connection.close()


# --------------------------------------------------------------------------- broken input


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n", b"400"),
    (b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", b"400"),  # then the client stops sending
    (b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n", b"413"),
    (b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
    (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
])
def test_broken_requests_get_a_short_answer_not_a_traceback(server, caplog, request_bytes, status):
    running, _ = server()
    sock = raw(running.port, request_bytes)
    sock.shutdown(socket.SHUT_WR)  # a truncated body: the client says it has nothing more
    said = read_all(sock)
    assert said.startswith(b"HTTP/1.1 " + status) and len(said) < 400 and b"Traceback" not in said
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert get(running.port) == (200, b"pong")


def test_pipelined_requests_are_answered_in_order_and_a_flood_of_them_is_refused(server):
    running, app = server()
    sock = raw(running.port, b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"
                             b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nb")
    said = read_all(sock, 1.5)  # /slow waits for its release: nothing after it may come first
    assert said.count(b"HTTP/1.1 200") == 1 and said.endswith(b"ponga")
    app.config["release"].set()
    rest = read_all(sock)
    assert rest.count(b"HTTP/1.1 200") == 2 and rest.index(b"done") < rest.index(b"pongb") and rest.endswith(b"pongb")
    flood = raw(running.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" * (httpserver.PIPELINED_MAX + 50))
    answered = read_all(flood)
    assert b"HTTP/1.1 400" in answered and answered.count(b"pong") <= httpserver.PIPELINED_MAX
    assert get(running.port) == (200, b"pong")


def test_what_a_client_sends_while_its_answer_waits_is_left_in_the_kernel(server):
    running, app = server()
    sock = raw(running.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)  # its answer is being made: what follows arrives while it waits
    sock.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        for _ in range(200):
            sent += sock.send(b"x" * 65536)
            time.sleep(0.005)
    time.sleep(0.2)
    held = [len(connection._held) for connection in list(running.server.connections)]
    assert sent > 1_000_000 and held and max(held) <= FAST.max_header_bytes + 256 * 1024  # a head, and one read
    app.config["release"].set()
    sock.close()


def test_answers_are_framed_by_the_server(server):
    running, _ = server()
    head = read_all(raw(running.port, b"HEAD /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n") and b"pong" not in head
    assert b"connection: close" in head.lower()
    old = read_all(raw(running.port, b"POST /ping HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi"), 2)
    assert old.startswith(b"HTTP/1.1 200") and old.endswith(b"ponghi") and b"connection: close" in old.lower()
    sock = raw(running.port, b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"ok")
    assert sock.recv(1000).endswith(b"pongok")
    upgrade = read_all(raw(running.port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
                                         b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"), 2)
    assert upgrade.count(b"HTTP/1.1 200") == 1 and b"connection: close" in upgrade.lower()  # answered, not upgraded


def test_a_head_sent_in_pieces_is_bounded_while_it_arrives(server):
    running, _ = server()
    sock = raw(running.port, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(6):
        with contextlib.suppress(OSError):
            sock.sendall(b"a" * 4000)
    said = read_all(sock)
    assert said.startswith(b"HTTP/1.1 431")


def test_an_answer_header_with_a_line_break_is_never_sent():
    app = Flask("split")

    @app.get("/split")
    def split() -> Response:
        response = Response(b"x")
        response.headers["X-Name"] = "a"
        return response

    def wsgi(environ, start_response):  # what a buggy application might do: a device's text in a header
        def start(status, headers, exc_info=None):
            return start_response(status, headers + [("X-Reported", "evil\r\nSet-Cookie: x=1")], exc_info)
        return app(environ, start)

    running = httpserver.start_in_thread(wsgi, limits=FAST)
    try:
        said = read_all(raw(running.port, b"GET /split HTTP/1.1\r\nHost: x\r\n\r\n"), 2)
        assert said.startswith(b"HTTP/1.1 500") and b"Set-Cookie" not in said
    finally:
        running.stop()


# --------------------------------------------------------------------------- caps


def test_a_full_house_makes_room_by_closing_an_idle_connection(server):
    running, _ = server(Limits(max_connections=5, request_timeout=30, keepalive_timeout=30, graceful_timeout=0.5))
    idle = [raw(running.port, b"") for _ in range(5)]
    time.sleep(0.2)
    assert get(running.port) == (200, b"pong")  # the oldest idle one was closed for it
    assert sum(1 for sock in idle if closed_within(sock, 0.3)[0]) >= 1
    for sock in idle:
        sock.close()


def test_requests_beyond_what_the_threads_can_take_get_503_with_retry_after(server):
    running, app = server(Limits(threads=1, max_pending=1, graceful_timeout=0.5))
    slow = threading.Thread(target=get, args=(running.port, "/slow"), daemon=True)
    slow.start()
    time.sleep(0.3)  # it holds the one thread
    sock = raw(running.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    said = read_all(sock, 3)
    assert said.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in said
    app.config["release"].set()
    slow.join(5)
    assert get(running.port) == (200, b"pong")


# --------------------------------------------------------------------------- file bodies


def test_a_slow_download_that_keeps_moving_is_never_cut_and_holds_no_thread(server):
    running, app = server(Limits(threads=1, send_timeout=1.0, graceful_timeout=0.5), image_bytes=8 * 1024 * 1024)
    sock = raw(running.port, b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    received = 0
    began = time.monotonic()
    while time.monotonic() - began < 3.0:  # three send timeouts long, 64 KiB every 0.25 s
        chunk = sock.recv(65536)
        assert chunk, "the server cut a download that kept moving"
        received += len(chunk)
        assert get(running.port) == (200, b"pong")  # the one app thread is free all along
        time.sleep(0.25)
    assert 0 < received < 8 * 1024 * 1024
    sock.close()


def test_a_download_nobody_reads_is_closed_after_the_send_timeout(server):
    running, app = server(Limits(send_timeout=1.0, graceful_timeout=0.5), image_bytes=16 * 1024 * 1024)
    sock = raw(running.port, b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deadline = time.monotonic() + 10
    while not app.config["closed"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.config["closed"] and app.config["closed"][0] < 16 * 1024 * 1024  # given up part way
    sock.close()


def test_a_broken_transfer_resumes_with_a_range_request(server):
    running, app = server(image_bytes=1024 * 1024)
    status, first = get(running.port, "/file")
    assert status == 200 and len(first) == 1024 * 1024
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    connection.request("GET", "/file", headers={"Range": "bytes=1000-"})
    response = connection.getresponse()
    assert response.status == 206 and response.read() == first[1000:]
    connection.request("GET", "/file", headers={"Range": "bytes=-10"})
    assert connection.getresponse().read() == first[-10:]
    assert app.config["closed"][:2] == [1024 * 1024, 1024 * 1024 - 1000]


@pytest.mark.parametrize("header, expected", [
    (None, None), ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 900)), ("bytes=-50", (950, 50)),
    ("bytes=990-5000", (990, 10)), ("bytes=5-1,7-9", None), ("items=0-1", None), ("bytes=abc", None),
    ("bytes=9-3", None),
])
def test_byte_ranges(header, expected):
    assert byte_range(header, 1000) == expected


def test_a_range_past_the_end_is_not_satisfiable():
    with pytest.raises(httpserver.RangeNotSatisfiable):
        byte_range("bytes=1000-", 1000)


# --------------------------------------------------------------------------- what the red team found


def test_a_slow_link_that_keeps_moving_is_not_cut_by_a_big_piece(server):
    running, app = server(Limits(send_timeout=2.0, graceful_timeout=0.5), image_bytes=8 * 1024 * 1024)
    sock = raw(running.port, b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n", receive_buffer=4096)
    received, began = 0, time.monotonic()
    while time.monotonic() - began < 6.0:  # about 12 KiB/s: a piece of 1 MiB would take a minute and a half
        chunk = sock.recv(4096)
        assert chunk, f"cut after {received} bytes: {httpserver.STATS.closed}"
        received += len(chunk)
        time.sleep(0.3)
    assert not app.config["closed"], httpserver.STATS.closed
    sock.close()


def test_a_connection_reset_before_the_head_is_written_gives_the_file_back(server):
    running, app = server(image_bytes=1024 * 1024)
    for _ in range(20):
        sock = raw(running.port, b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST at once
    deadline = time.monotonic() + 5
    while len(app.config["closed"]) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(app.config["closed"]) == 20  # every span closed: its slot (on_close) released


@pytest.mark.parametrize("header", ["bytes=\u00b2-", "bytes=" + "9" * 5000 + "-", "bytes=-\u0661"])
def test_a_range_no_one_can_parse_is_ignored_not_a_crash(header):
    assert byte_range(header, 1000) is None


def test_content_length_and_chunked_together_are_refused(server):
    running, _ = server()
    sock = raw(running.port, b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nabc\r\n0\r\n\r\nGET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    said = read_all(sock)
    assert said.startswith(b"HTTP/1.1 400") and said.count(b"HTTP/1.1") == 1


def test_a_body_in_thousands_of_tiny_chunks_is_refused_and_others_are_answered(server):
    running, _ = server(Limits(max_chunks=100, graceful_timeout=0.5))
    sock = raw(running.port, b"POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\na\r\n" * 500)
    assert read_all(sock).startswith(b"HTTP/1.1 400")
    assert get(running.port) == (200, b"pong")


def test_partial_bodies_cannot_hold_more_than_the_buffer_budget(server):
    running, _ = server(Limits(max_buffered_bytes=100_000, max_body_bytes=60_000, graceful_timeout=0.5))
    first = raw(running.port, b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"a" * 59_000)
    time.sleep(0.2)
    second = raw(running.port, b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"a" * 59_000)
    said = read_all(second, 3)
    assert said.startswith(b"HTTP/1.1 503") and b"Retry-After" in said
    first.sendall(b"a" * 1000)
    assert read_all(first, 3).startswith(b"HTTP/1.1 200")  # its budget was given back to it


def test_tls_clients_still_in_their_handshake_are_counted_and_make_room(tmp_path):
    import ssl

    from test_real_switches import lab_pki

    pki = lab_pki(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki["cert"]), str(pki["key"]))
    app = make_app()
    running = httpserver.start_in_thread(app, limits=Limits(max_connections=5, request_timeout=30, graceful_timeout=0.5),
                                         ssl_context=context)
    try:
        silent = [raw(running.port, b"") for _ in range(5)]  # connect, never start the handshake
        time.sleep(0.3)
        assert httpserver.STATS.open_connections >= 5
        client = ssl.create_default_context(cafile=str(pki["ca"]))
        connection = http.client.HTTPSConnection("127.0.0.1", running.port, timeout=5, context=client)
        connection.request("GET", "/ping")
        assert connection.getresponse().read() == b"pong"  # one of the silent ones made room
        for sock in silent:
            sock.close()
    finally:
        running.stop()


# --------------------------------------------------------------------------- batched writes


def test_work_that_waits_while_batches_run_goes_in_one_batch_and_each_request_gets_its_own_answer():
    """What the quick path hands over as Batched (the listener's durable writes) runs as few batches as it can: the
    requests that arrive while BATCHES_IN_FLIGHT batches run share the next one; a batch that fails fails only its
    own requests, and the server goes on."""
    release = threading.Event()
    batches: list[list[str]] = []

    def run_many(items: list[str]) -> list[httpserver.QuickAnswer]:
        batches.append(list(items))
        if len(batches) <= httpserver.BATCHES_IN_FLIGHT:
            release.wait(5)
        if "boom" in items:
            raise RuntimeError("a store that failed")
        return [httpserver.QuickAnswer(200, f"answer to {item}".encode(), "text/plain") for item in items]

    app = httpserver.Application(make_app(), lambda request: httpserver.Batched(request.path.strip("/"), run_many))
    running = httpserver.start_in_thread(app, limits=FAST)
    answers: dict[str, tuple[int, bytes]] = {}

    def ask(name: str) -> None:
        answers[name] = get(running.port, f"/{name}")

    try:
        first = [threading.Thread(target=ask, args=(f"first{n}",)) for n in range(httpserver.BATCHES_IN_FLIGHT)]
        for thread in first:
            thread.start()
        deadline = time.monotonic() + 5
        while len(batches) < httpserver.BATCHES_IN_FLIGHT and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting = [threading.Thread(target=ask, args=(f"later{n}",)) for n in range(6)]
        for thread in waiting:
            thread.start()
        while len(running.server._batch) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        for thread in first + waiting:
            thread.join(10)
        in_flight = httpserver.BATCHES_IN_FLIGHT
        assert sorted(batches[-1]) == [f"later{n}" for n in range(6)] and len(batches) == in_flight + 1  # one for six
        assert all(answers[name] == (200, f"answer to {name}".encode()) for name in answers)
        assert len(answers) == in_flight + 6

        ask("boom")
        assert answers["boom"][0] == 500
        ask("after")
        assert answers["after"] == (200, b"answer to after")
    finally:
        release.set()
        running.stop()
