"""``GET /metrics``: the numbers of ``/stats`` and the call latency histograms, in Prometheus text format.

Admin only: the page names every user and their load, which no other user may see. Prometheus sends
the token with ``authorization: {type: Bearer, credentials_file: ...}`` in its scrape config.

Everything is read at scrape time from the database and Redis (no counters live in the API), so any
API process answers the same and a restart loses nothing. Latency by phase, from the ``inputs``
table: ``queued`` (``started_at - created_at``), ``container_start`` (``startup``: how long an input
waited for its runner, process or container, to start; cold starts only) and ``run`` (``duration``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .. import stats
from .auth import authenticate, require_admin
from .schema import Doc
from .services import services
from .stats import snapshot

bp = Blueprint("metrics", __name__)
doc = Doc("operations")


def _gauge(name: str, doc: str, value: float | None = None, labels: dict[str, Any] | None = None) -> Metric:
    if labels is None:
        return GaugeMetricFamily(name, doc, value=value or 0)
    ((label, values),) = labels.items()
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, number in values.items():
        family.add_metric([str(key)], number or 0)
    return family


def families(numbers: dict[str, Any], histograms: dict[str, tuple[list[int], float, int]]) -> list[Metric]:
    """The metric families of one snapshot (everyone's numbers) and the latency histograms."""
    workers = numbers["workers"]
    out: list[Metric] = [
        _gauge("minimodal_uptime_seconds", "Seconds since this API process started.", numbers["uptime"]),
        _gauge("minimodal_functions", "Functions deployed (all apps, running or stopped).", numbers["functions"]),
        CounterMetricFamily(
            "minimodal_function_calls", "Function calls accepted (a .map is one call).", numbers["function_calls"]
        ),
        _gauge("minimodal_inputs", "Inputs of function calls by status.", labels={"status": numbers["calls"]}),
        _gauge(
            "minimodal_workers",
            "Live workers by state (busy: a runner in use; unhealthy: stale heartbeat).",
            labels={"state": {s: workers[s] for s in ("idle", "busy", "unhealthy")}},
        ),
        _gauge(
            "minimodal_workers_by_runtime",
            "Live workers that have each runtime.",
            labels={"runtime": workers["runtime"]},
        ),
        _gauge("minimodal_worker_slots", "Task slots of healthy workers (capacity).", workers["capacity"]),
        _gauge(
            "minimodal_worker_runners",
            "Warm runners of healthy workers by state.",
            labels={"state": {"busy": workers["busy_runners"], "idle": workers["idle_runners"]}},
        ),
        _gauge("minimodal_queue_depth", "Messages waiting in each Celery queue.", labels={"queue": numbers["queues"]}),
        _gauge(
            "minimodal_dispatcher_up",
            "1 when the dispatcher's heartbeat is fresh.",
            int(numbers["dispatcher"]["alive"]),
        ),
    ]
    for field, doc in (
        ("running", "Tasks in flight per user (what the quota limits)."),
        ("queued", "Inputs waiting per user."),
        ("quota", "Concurrency quota per user (tasks in flight)."),
        ("weight", "Fair-share weight per user."),
    ):
        family = GaugeMetricFamily(f"minimodal_user_{field}", doc, labels=["user"])
        for user in numbers["users"]:
            family.add_metric([user["name"]], user[field])
        out.append(family)
    latency = HistogramMetricFamily(
        "minimodal_call_latency_seconds",
        "Latency of finished inputs by phase: queued (accepted to started), container_start (waiting for a "
        "runner to start, cold starts only) and run (the function's own time).",
        labels=["phase"],
    )
    for phase, (counts, total, _count) in histograms.items():
        bounds = [str(b) for b in stats.LATENCY_BUCKETS] + ["+Inf"]
        latency.add_metric([phase], list(zip(bounds, counts, strict=True)), sum_value=total)
    out.append(latency)
    return out


class _Fixed:
    """A collector of families computed once, for one scrape."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


@bp.get("/metrics")
@doc(
    "Prometheus metrics (admin)",
    reply=str,
    media="text/plain",
    errors=(403,),
    description="Text exposition format: the /stats numbers and `minimodal_call_latency_seconds`.",
)
def get_metrics():  # type: ignore[no-untyped-def]
    authenticate()
    require_admin()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families(snapshot(None), stats.latency_histograms(services().db))))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
