"""Prometheus text exposition of the service's counters (``GET /metrics``): requests by route and status, latency
and batch-size histograms, and the gauges of queue depth and admitted requests. No client library needed."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

__all__ = ["Histogram", "ServiceMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """Cumulative-bucket histogram as Prometheus defines it (``le`` upper bounds, ``+Inf``, sum and count)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        for bound, count in zip([*map(_number, self.buckets), "+Inf"], self.counts):
            running += count
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{bound}"}} {running}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {running}"]
        return out


def _number(value: float) -> str:
    return f"{value:g}"


class ServiceMetrics:
    """What ``/metrics`` reports; ``gauges`` are read when scraped."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.gauges = gauges

    def record(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
        self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self) -> str:
        lines = ["# HELP headstart_requests_total HTTP requests answered, by route and status.",
                 "# TYPE headstart_requests_total counter"]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'headstart_requests_total{{route="{route}",status="{status}"}} {count}')
        lines += ["# HELP headstart_request_seconds Time from request to response, by route.",
                  "# TYPE headstart_request_seconds histogram"]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.lines("headstart_request_seconds", f'route="{route}"')
        lines += ["# HELP headstart_batch_size Inputs per forward pass.", "# TYPE headstart_batch_size histogram",
                  *self.batch_sizes.lines("headstart_batch_size")]
        for name, (help_text, read) in self.gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
