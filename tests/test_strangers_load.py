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


def poll_as_strangers(port: int, serials: list[str], clients: int = 16) -> list[str]:
    """Each serial polls once, from ``clients`` connections at once; the answers that were not a backoff."""
    errors: list[str] = []

    def client(first: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for serial in serials[first::clients]:
            udi = protocol.Udi("C9300-24P", "V01", serial)
            connection.request("POST", "/pnp/WORK-REQUEST", body=messages.work_request(udi, f"c-{serial}"),
                               headers={"Content-Type": "application/xml"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or b"backoff" not in body:
                errors.append(f"{response.status} {body[:80]!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.parametrize("server_model", ["event", "threads"])
def test_sightings_answered_before_they_are_written_are_all_written_by_a_graceful_stop(tmp_path, server_model):
    (tmp_path / "ds.xml").write_text(datastore_xml())
    server, port, log = start_serve(tmp_path, "--server", server_model)
    serials = [f"LATE{n:05d}" for n in range(4000)]
    try:
        assert not poll_as_strangers(port, serials)
    finally:
        stop(server)  # at once: what still waits behind the answers is written on the way out
    with sqlite3.connect(tmp_path / "ds.state.db") as db:
        recorded = {row[0] for row in db.execute("SELECT serial FROM unclaimed")}
    assert recorded == set(serials)
    assert "not written" not in open(log).read()


def test_24000_strangers_leave_at_most_10000_records_a_small_database_and_short_logs(tmp_path):
    (tmp_path / "ds.xml").write_text(datastore_xml())
    server, port, log = start_serve(tmp_path)
    strangers = 24_000
    try:
        before = os.path.getsize(log)
        errors = poll_as_strangers(port, [f"FAKE{n:06d}" for n in range(strangers)])
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
