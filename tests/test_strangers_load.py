"""24,000 strangers with distinct serials, on ``pnp-service serve`` with its defaults: at most 10,000 unclaimed
records, a small state database, and under 400 log bytes per poll."""

from __future__ import annotations

import http.client
import os
import sqlite3
import threading
import time

import pytest

from conftest import datastore_xml
from pnp_service import protocol
from pnp_service.simulator import messages
from test_rollout_load import start_serve, stop


pytestmark = pytest.mark.heavy


def test_24000_strangers_leave_at_most_10000_records_a_small_database_and_short_logs(tmp_path):
    (tmp_path / "ds.xml").write_text(datastore_xml())
    server, port, log = start_serve(tmp_path)
    strangers = 24_000
    clients = 16
    errors: list[str] = []

    def client(first: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(first, strangers, clients):
            udi = protocol.Udi("C9300-24P", "V01", f"FAKE{n:06d}")
            connection.request("POST", "/pnp/WORK-REQUEST", body=messages.work_request(udi, f"c{n}"),
                               headers={"Content-Type": "application/xml"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or b"backoff" not in body:
                errors.append(f"{response.status} {body[:80]!r}")

    try:
        before = os.path.getsize(log)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[:3]
        time.sleep(0.5)
        logged = os.path.getsize(log) - before
    finally:
        stop(server)
    state = tmp_path / "ds.state.db"
    with sqlite3.connect(state) as db:
        count = db.execute("SELECT count(*) FROM unclaimed").fetchone()[0]
    size = sum(os.path.getsize(path) for path in (state, str(state) + "-wal") if os.path.exists(path))
    assert count == 10_000
    assert size < 20 * 1024 * 1024, f"state database {size} bytes"
    assert logged / strangers < 400, f"{logged / strangers:.0f} log bytes per poll"
