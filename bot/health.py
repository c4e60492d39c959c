"""Optional health and metrics endpoint: GET /healthz and Prometheus GET /metrics.

Everything is read from storage at scrape time, so what is reported is what the bot
has recorded; nothing here keeps counters of its own.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from storage import Store

from .config import Config

SOURCES = ("huggingface", "arxiv")


class StoreCollector:
    """Gauges read from the store when Prometheus scrapes."""

    def __init__(self, store: Store, config: Config):
        self.store = store
        self.config = config

    def collect(self):
        failures = GaugeMetricFamily("papers_bot_source_consecutive_failures", "Failed polls in a row", labels=["source"])
        success = GaugeMetricFamily("papers_bot_source_last_success_timestamp_seconds",
                                    "When the source last answered", labels=["source"])
        for name in SOURCES:
            state = self.store.source_state(name) or {}
            failures.add_metric([name], state.get("consecutive_failures") or 0)
            if state.get("last_success"):
                success.add_metric([name], state["last_success"].timestamp())
        deliveries = GaugeMetricFamily("papers_bot_deliveries", "Outbox rows by status", labels=["status"])
        counts = self.store.delivery_counts()
        for status in ("pending", "sending", "sent", "failed", "overflow"):
            deliveries.add_metric([status], counts.get(status, 0))
        yield failures
        yield success
        yield deliveries
        yield GaugeMetricFamily("papers_bot_subscriptions", "Subscriptions in all channels",
                                value=len(self.store.subscription_ids()))
        yield GaugeMetricFamily("papers_bot_papers", "Papers stored", value=self.store.count_papers())


def health(store: Store, config: Config) -> tuple[int, dict]:
    """503 when every enabled source has failed past the notice threshold, else 200."""
    sources = {}
    for name, cfg in (("huggingface", config.huggingface), ("arxiv", config.arxiv)):
        if cfg.enabled:
            state = store.source_state(name) or {}
            sources[name] = {
                "consecutive_failures": state.get("consecutive_failures") or 0,
                "last_success": state["last_success"].isoformat() if state.get("last_success") else None,
                "last_error": state.get("last_error"),
            }
    threshold = config.delivery.source_failure_notice_after
    failing = bool(sources) and all(s["consecutive_failures"] >= threshold for s in sources.values())
    return (503 if failing else 200), {"status": "failing" if failing else "ok", "sources": sources,
                                       "pending_deliveries": store.count_pending()}


async def start_metrics(store: Store, config: Config, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, config))

    async def healthz(request: web.Request) -> web.Response:
        status, body = health(store, config)
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
