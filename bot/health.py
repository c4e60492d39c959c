"""Optional health and metrics endpoint: GET /healthz and Prometheus GET /metrics.

Everything is read from storage at scrape time, so what is reported is what the bot
has recorded; nothing here keeps counters of its own.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from storage import StoreContract

from .config import Config
from .errors import StorageError
from .http_guard import Served, connection_cap, serve
from .models import SourceStatus
from .poller import STORAGE_ERROR

log = logging.getLogger(__name__)

class StoreCollector:
    """Gauges read from the store when Prometheus scrapes."""

    def __init__(self, store: StoreContract, config: Config, polling: Callable[[], bool] | None = None):
        self.store = store
        self.config = config
        self.polling = polling  # a poller (`run --role poller`): whether it holds the poller's lease

    def collect(self):
        failures = GaugeMetricFamily("papers_bot_source_consecutive_failures", "Failed polls in a row",
                                     labels=["source"])
        success = GaugeMetricFamily("papers_bot_source_last_success_timestamp_seconds",
                                    "When the source last answered", labels=["source"])
        for name in self.config.sources:
            state = self.store.source_state(name) or SourceStatus(name)
            failures.add_metric([name], state.consecutive_failures)
            if state.last_success:
                success.add_metric([name], state.last_success.timestamp())
        deliveries = GaugeMetricFamily("papers_bot_deliveries", "Outbox rows by status", labels=["status"])
        counts = self.store.delivery_counts()
        for status in ("pending", "sending", "sent", "failed", "overflow", "unsubscribed"):
            deliveries.add_metric([status], getattr(counts, status))
        yield failures
        yield success
        yield deliveries
        yield GaugeMetricFamily("papers_bot_subscriptions", "Subscriptions in all channels",
                                value=len(self.store.subscription_ids()))
        yield GaugeMetricFamily("papers_bot_papers", "Papers stored", value=self.store.count_papers())
        if self.polling is not None:
            yield GaugeMetricFamily("papers_bot_polling", "1 while this process is the elected poller, 0 standing by",
                                    value=int(self.polling()))


def health(store: StoreContract, config: Config, faults: Mapping[str, str] | None = None, *,
           role: str = "all", polling: bool | None = None) -> tuple[int, dict]:
    """200 "ok", or 503 with the reason in "status":

    - "storage": the last poll of some source failed on the bot's own storage (its
      database full, read-only or otherwise refusing writes), or the database cannot be
      read at all; "internal": it failed on a bug after the fetch. Waiting does not fix
      these; an operator must look.
    - "failing": every enabled source has failed `source_failure_notice_after` times in a
      row (one source down is a normal day; all of them means nothing arrives).

    `faults` is the poller's (Poller.faults): polls that failed on the bot's own side, in
    memory, so they count even when the database could not record them.

    A process of one role (`run --role`) says so ("role"); a poller says whether it is the
    elected one ("polling"; a standby is healthy). The sources' health is the pollers' (and
    `all`'s) concern: a deliverer or a front-end is unhealthy only when it cannot read the database.
    """
    if role in ("deliverer", "frontend"):
        try:
            pending = store.count_pending()
        except Exception as exc:
            return 503, {"status": "storage", "role": role,
                         "error": f"cannot read the database: {type(exc).__name__}: {exc}"[:300]}
        return 200, {"status": "ok", "role": role, "pending_deliveries": pending}
    faults = dict(faults or {})
    sources: dict[str, dict[str, Any]] = {}
    try:
        for name, cfg in config.sources.items():
            if cfg.enabled:
                state = store.source_state(name) or SourceStatus(name)
                sources[name] = {
                    "consecutive_failures": state.consecutive_failures,
                    "last_success": state.last_success.isoformat() if state.last_success else None,
                    "last_error": state.last_error,
                }
        pending = store.count_pending()
    except Exception as exc:  # the database itself is the problem
        return 503, {"status": "storage", "error": f"cannot read the database: {type(exc).__name__}: {exc}"[:300],
                     "sources": sources}
    for name, reason in faults.items():
        entry = sources.setdefault(name, {})
        entry["own_failure"] = reason  # may not be in the database: it may be what failed
        entry["last_error"] = reason
    threshold = config.delivery.source_failure_notice_after
    failing = bool(sources) and all(s.get("consecutive_failures", 0) >= threshold for s in sources.values())
    if faults:
        status = "storage" if any(r.startswith(STORAGE_ERROR) for r in faults.values()) else "internal"
    else:
        status = "failing" if failing else "ok"
    body: dict[str, Any] = {"status": status, "sources": sources, "pending_deliveries": pending}
    if role != "all":
        body.update(role=role, polling=bool(polling))
    return (200 if status == "ok" else 503), body


async def start_metrics(store: StoreContract, config: Config, port: int, host: str | None = None,
                        faults: Mapping[str, str] | None = None, *, role: str = "all",
                        polling: Callable[[], bool] | None = None) -> Served:
    """Serve /healthz and /metrics on `host` (default: `[metrics] host`, 127.0.0.1); await .cleanup().
    `role` and `polling` (a poller's: whether it is the elected one): see `health`."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, config, polling))

    async def healthz(request: web.Request) -> web.Response:
        status, body = health(store, config, faults, role=role, polling=polling() if polling else None)
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.Response:
        try:
            body = generate_latest(registry)
        except StorageError as exc:  # a busy or broken database: say so, no traceback per scrape
            log.warning("/metrics: %s", exc)
            return web.json_response({"status": "storage", "error": str(exc)[:300]}, status=503)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    # A scraper or two: a small share of the file limit is plenty.
    return await serve(app, config.metrics_host if host is None else host, port, name="metrics endpoint",
                       max_connections=connection_cap(share=1 / 16, ceiling=32), max_body=64 * 1024)
