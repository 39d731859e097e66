"""The REST server's metrics in the Prometheus text exposition format (version 0.0.4).

`ServingMetrics` counts requests by route and status and times them in a histogram; the
request path only takes a lock for a few additions. What is a state rather than an event (the
inference log's backlog, the versions serving, model loads) is read when `/metrics` is
scraped, from the objects that hold it.

Metrics:
    mlops_serving_requests_total{route,method,status}: requests answered (counter).
    mlops_serving_request_duration_seconds{route}: time from the request line read to the
        answer written (histogram, `LATENCY_BUCKETS`).
    mlops_serving_predictions_total{model,new_card}: rows scored (counter).
    mlops_serving_inference_log_pending_rows: rows recorded, not yet committed (gauge).
    mlops_serving_inference_log_written_rows_total, ..._commits_total, ..._flush_failures_total.
    mlops_serving_model_info{model,registered_model,version,alias,scorer}: 1 per version
        serving (gauge).
    mlops_serving_model_loads_total{model,outcome}: versions loaded (`ok`) or failed (`error`).
    mlops_serving_model_load_seconds{model}: how long the serving version took to load.
    mlops_serving_start_time_seconds: when the server started (Unix time).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a cached compiled score (well under a millisecond) to a stalled request.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
PREFIX = "mlops_serving_"


def escape_label(value: str) -> str:
    """A label value as the exposition format writes it (backslash, quote, newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def sample(name: str, labels: Mapping[str, Any] | None, value: float) -> str:
    """One sample line: `name{label="value",...} value`."""
    if labels:
        inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {format_value(value)}"
    return f"{name} {format_value(value)}"


def family(name: str, kind: str, help_text: str, lines: Iterable[str]) -> list[str]:
    """A metric family: its HELP and TYPE lines, then its samples."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]


class _Histogram:
    """Bucket counts (not cumulative), their sum and count, for one label set."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is above every bound
        self.sum = 0.0
        self.count = 0


class ServingMetrics:
    """Request counters and the latency histogram of one server.

    Args:
        buckets: The histogram's upper bounds in seconds, increasing.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"histogram buckets must increase strictly, got {buckets}")
        self.buckets = tuple(float(b) for b in buckets)
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._predictions: dict[tuple[str, bool], int] = {}
        self._lock = threading.Lock()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        index = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            key = (route, method, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            histogram = self._latency.get(route)
            if histogram is None:
                histogram = self._latency[route] = _Histogram(len(self.buckets))
            histogram.counts[index] += 1
            histogram.sum += seconds
            histogram.count += 1

    def predicted(self, model: str, new_card: bool | None, rows: int = 1) -> None:
        """Count scored rows of a model (and whether their card was new)."""
        key = (model, bool(new_card))
        with self._lock:
            self._predictions[key] = self._predictions.get(key, 0) + rows

    def requests(self) -> dict[tuple[str, str, int], int]:
        """Requests so far by (route, method, status)."""
        with self._lock:
            return dict(self._requests)

    def render(self) -> list[str]:
        """The request, latency and prediction families as exposition lines."""
        with self._lock:
            requests = sorted(self._requests.items())
            latency = {
                route: (list(h.counts), h.sum, h.count) for route, h in self._latency.items()
            }
            predictions = sorted(self._predictions.items())
        lines = family(
            f"{PREFIX}requests_total",
            "counter",
            "Requests answered, by route, method and HTTP status.",
            (
                sample(
                    f"{PREFIX}requests_total",
                    {"route": route, "method": method, "status": str(status)},
                    count,
                )
                for (route, method, status), count in requests
            ),
        )
        name = f"{PREFIX}request_duration_seconds"
        histogram_lines: list[str] = []
        for route in sorted(latency):
            counts, total, count = latency[route]
            cumulative = 0
            for bound, bucket in zip(self.buckets, counts, strict=False):
                cumulative += bucket
                histogram_lines.append(
                    sample(
                        f"{name}_bucket", {"route": route, "le": format_value(bound)}, cumulative
                    )
                )
            histogram_lines.append(sample(f"{name}_bucket", {"route": route, "le": "+Inf"}, count))
            histogram_lines.append(sample(f"{name}_sum", {"route": route}, total))
            histogram_lines.append(sample(f"{name}_count", {"route": route}, count))
        lines += family(
            name,
            "histogram",
            "Time from the request line read to the answer written, by route.",
            histogram_lines,
        )
        lines += family(
            f"{PREFIX}predictions_total",
            "counter",
            "Rows scored, by model and whether the online store had never seen the card.",
            (
                sample(
                    f"{PREFIX}predictions_total",
                    {"model": model, "new_card": "true" if new else "false"},
                    count,
                )
                for (model, new), count in predictions
            ),
        )
        return lines
