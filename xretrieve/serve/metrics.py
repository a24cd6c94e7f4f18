"""Metrics in Prometheus text format, and the middleware that counts every request.

Rules kept here: each app has its own `CollectorRegistry` (two apps in one process never mix
counts); requests are labelled by route template (`/api/thumb/{item_id}`), never by the raw
path, so ids and probes cannot grow the label set; index generations, rows, the worker pool
and the thumbnail cache are read at scrape time from the objects themselves.
The middleware also adds headers every response should carry (no sniffing, no referrer: a
`?token=` in a URL never leaks to another site).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "ObserveMiddleware"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _StateCollector(Collector):
    """Gauges read at scrape time from a callable returning {name: (help, labels, samples)}."""

    def __init__(self, read: Callable[[], Mapping[str, tuple[str, list[str], list[Any]]]]):
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (doc, labels, samples) in self._read().items():
            g = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in samples:
                g.add_metric(values, value)
            yield g


class Metrics:
    """The app's registry: request counters, a latency histogram, and state gauges."""

    def __init__(self, state: Callable[[], Mapping[str, tuple[str, list[str], list[Any]]]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "xretrieve_http_requests",
            "HTTP requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "xretrieve_http_errors",
            "HTTP requests answered with status >= 400, by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xretrieve_http_request_duration_seconds",
            "Time from request to the end of the response, by endpoint.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state))

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(endpoint, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)


class ObserveMiddleware:
    """Times and counts each HTTP request by route; adds the common security headers."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(endpoint, scope["method"], status, time.perf_counter() - start)
