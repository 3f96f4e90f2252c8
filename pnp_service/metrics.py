"""What ``/metrics`` says, in Prometheus' format (prometheus-client), and what ``/healthz`` answers.

Owns the listener's counters (polls by event, inputs refused by reason, SUDI
proofs refused by reason, writes and their latency), the gauges read at scrape
time from the store (devices by state, writes waiting in the Clixon journal,
unclaimed devices forgotten), from the HTTP server (open connections, those it
closed by reason, image transfers),
and the health verdict (store reachable, declarations valid, controller
connected).  Each listener process keeps its own registry: with several gunicorn
workers, scrape each, or run one worker per listener.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import httpserver, views
from .downloads import TransferGate
from .model import Handoff
from .stores.base import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _ScrapeTime:
    """What is read when scraped: the HTTP server's connections, image transfers, what the store forgot."""

    def __init__(self, store: Store, transfers: TransferGate | None):
        self.store, self.transfers = store, transfers

    def collect(self):
        stats = httpserver.STATS
        yield GaugeMetricFamily("pnp_http_connections", "Open client connections", value=stats.open_connections)
        closed = CounterMetricFamily("pnp_http_closed", "Connections the server closed, by reason", labels=["reason"])
        for reason, count in sorted(stats.closed.items()):
            closed.add_metric([reason], count)
        yield closed
        refused = CounterMetricFamily("pnp_http_refused", "Answers the HTTP server gave itself, by status",
                                      labels=["status"])
        for status, count in sorted(stats.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused
        yield GaugeMetricFamily("pnp_image_transfers", "Image bodies being sent", value=stats.transfers)
        if self.transfers is not None:
            yield GaugeMetricFamily("pnp_image_transfer_slots_in_use", "Devices holding an image transfer slot",
                                    value=self.transfers.in_use())
        counters = self.store.counters()
        yield CounterMetricFamily("pnp_unclaimed_dropped", "Unclaimed devices forgotten to stay within --max-unclaimed",
                                  value=counters.get("unclaimed_dropped", 0))
        yield CounterMetricFamily("pnp_unclaimed_expired", "Unclaimed devices forgotten after --unclaimed-days unseen",
                                  value=counters.get("unclaimed_expired", 0))
        yield CounterMetricFamily("pnp_lookups_skipped", "Devices decided on the listener's copy because the controller "
                                  "was too busy to answer a lookup in time", value=counters.get("lookups_skipped", 0))


class Metrics:
    """One listener's metrics."""

    def __init__(self, store: Store, snapshot_seconds: float = 10.0, transfers: TransferGate | None = None):
        self.store = store
        self.registry = CollectorRegistry()
        self.polls = PromCounter("pnp_messages_total", "Agent messages handled, by event", ["event"], registry=self.registry)
        self.refused = PromCounter("pnp_refused_inputs_total", "Requests refused before any decision, by reason",
                                   ["reason"], registry=self.registry)
        self.sudi_refused = PromCounter("pnp_sudi_refused_total", "SUDI proofs refused, by reason", ["reason"],
                                        registry=self.registry)
        self.writes = Histogram("pnp_store_write_seconds", "Time to make a decision's change durable", registry=self.registry,
                                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.devices = Gauge("pnp_devices", "Declared devices by state, and unclaimed ones", ["state"], registry=self.registry)
        self.handoffs = Gauge("pnp_handoffs", "Provisioned devices by hand-off state (pending, managed, failed)",
                              ["state"], registry=self.registry)
        self.pending = Gauge("pnp_journal_pending", "Writes waiting in the journal for the controller", registry=self.registry)
        self.registry.register(_ScrapeTime(store, transfers))
        self._snapshot_seconds = snapshot_seconds
        self._snapshot_at = 0.0
        self._lock = threading.Lock()

    def _refresh_gauges(self) -> None:
        """Devices by state, from a snapshot at most every ``snapshot_seconds`` (cheap enough at 10,000)."""
        with self._lock:
            if time.monotonic() - self._snapshot_at < self._snapshot_seconds:
                return
            snapshot = self.store.snapshot()
            states: Counter[str] = Counter(str(views.shown_state(record)) for record in snapshot.devices)
            states["unclaimed"] = len(snapshot.unclaimed)
            self.devices.clear()
            for state, count in states.items():
                self.devices.labels(state).set(count)
            handoffs: Counter[str] = Counter(str(record.status.handoff.state) for record in snapshot.devices
                                             if record.status is not None and record.status.handoff.state)
            self.handoffs.clear()
            for state in (Handoff.PENDING, Handoff.MANAGED, Handoff.FAILED):
                self.handoffs.labels(str(state)).set(handoffs[str(state)])
            self.pending.set(self.store.pending_writes())
            self._snapshot_at = time.monotonic()

    def render(self) -> bytes:
        self._refresh_gauges()
        return generate_latest(self.registry)


def health(store: Store) -> tuple[bool, dict[str, Any]]:
    """Whether the listener can serve devices (the store answers: 200, else 503), and what an operator should look
    at even so (``degraded``: an invalid live edit, declarations that cannot be planned, a controller that is
    unreachable while the last copy is served).  A load balancer keeps a degraded listener: it serves."""
    problems: list[str] = []
    try:
        store.load("HEALTHZ-PROBE")  # a read, which also looks at the declarations file
        reachable = True
    except Exception as exc:  # noqa: BLE001 - any failure to read is what this reports
        reachable = False
        problems.append(f"store: {exc}")
    problems[:0] = store.problems()
    controller = store.controller_error()
    body = {
        "status": "ok" if reachable and not problems else "degraded",
        "store": type(store).__name__,
        "problems": problems,
    }
    if controller is not None:
        body["controller"] = "unreachable" if controller else "connected"
    return reachable, body
