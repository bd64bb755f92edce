"""Request metrics in the Prometheus text format, kept in process memory.

Each process reports its own counters (Prometheus sums the instances); no client
library is needed for three metric families. The middleware records the route
template, not the path, so ids never become labels.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "metrics_middleware"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and latency histograms of one process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], list[float]] = {}  # bucket counts, then sum, count
        self.gauges: dict[str, Callable[[], float]] = {}
        self.counters: dict[str, int] = {}
        self.started = time.time()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get((method, route))
        if hist is None:
            hist = self.latency[(method, route)] = [0.0] * (len(_BUCKETS) + 3)
        hist[bisect.bisect_left(_BUCKETS, seconds)] += 1
        hist[-2] += seconds
        hist[-1] += 1

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a plain counter (``okrcal_<name>_total``)."""
        self.counters[name] = self.counters.get(name, 0) + amount

    def render(self) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        out = [
            "# HELP okrcal_http_requests_total HTTP requests by method, route and status.",
            "# TYPE okrcal_http_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(
                f'okrcal_http_requests_total{{method="{method}",route="{_esc(route)}",'
                f'status="{status}"}} {n}'
            )
        out += [
            "# HELP okrcal_http_request_duration_seconds HTTP request latency.",
            "# TYPE okrcal_http_request_duration_seconds histogram",
        ]
        for (method, route), hist in sorted(self.latency.items()):
            labels = f'method="{method}",route="{_esc(route)}"'
            cumulative: float = 0.0
            for bound, in_bucket in zip((*_BUCKETS, float("inf")), hist[:-2], strict=True):
                cumulative += in_bucket
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(
                    f'okrcal_http_request_duration_seconds_bucket{{{labels},le="{le}"}} '
                    f"{cumulative:.0f}"
                )
            out.append(f"okrcal_http_request_duration_seconds_sum{{{labels}}} {hist[-2]:.6f}")
            out.append(f"okrcal_http_request_duration_seconds_count{{{labels}}} {hist[-1]:.0f}")
        for name, value in sorted(self.counters.items()):
            out += [f"# TYPE okrcal_{name}_total counter", f"okrcal_{name}_total {value}"]
        for name, read in sorted(self.gauges.items()):
            out += [f"# TYPE okrcal_{name} gauge", f"okrcal_{name} {read():g}"]
        out += [
            "# TYPE okrcal_process_start_time_seconds gauge",
            f"okrcal_process_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def metrics_middleware(metrics: Metrics) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware factory recording every HTTP request into ``metrics``."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":  # type: ignore[comparison-overlap]
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def record(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, record)
            finally:
                s: Any = scope
                route = s.get("path_template") or "<unmatched>"
                metrics.observe(s["method"], route, status, time.perf_counter() - start)

        return middleware

    return wrap
