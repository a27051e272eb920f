"""Prometheus instruments for one running service (its own registry: no global state)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from pipeline.aio import cancel_and_wait

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)
# HTTP answers range from a health check (< 1 ms) to a synthesized file or a waited-for job (many seconds).
_HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Active sessions and calls, per-stage latency, queue depths, dropped input, interruptions, event-loop lag,
    HTTP requests by route template, media job queue depth and the process's own CPU, memory and open files.

    docs/observability.md lists every name; dashboards depend on them, so they do not change."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds... read from /proc at scrape.
        ProcessCollector(registry=r)
        self.active_sessions = Gauge(
            "voxgate_active_sessions", "Sessions currently open", ["transport"], registry=r
        )
        self.sessions_refused = Counter(
            "voxgate_sessions_refused_total", "Sessions refused at max_sessions", registry=r
        )
        self.stage_latency = Histogram(
            "voxgate_stage_latency_seconds",
            "Per-stage latency",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "voxgate_queue_depth", "Items waiting, summed over sessions", ["queue"], registry=r
        )
        self.dropped_input = Counter(
            "voxgate_dropped_input_seconds_total", "Caller audio dropped past max_input_backlog_s", registry=r
        )
        self.turn_verdicts = Counter(
            "voxgate_turn_verdicts_total", "Pauses judged finished or unfinished", ["verdict"], registry=r
        )
        self.interruptions = Counter("voxgate_interruptions_total", "Barge-ins", ["kind"], registry=r)
        self.errors = Counter(
            "voxgate_client_errors_total", "Error events sent to clients", ["code"], registry=r
        )
        self.loop_lag = Gauge("voxgate_event_loop_lag_seconds", "Latest event-loop lag", registry=r)
        self.loop_lag_max = Gauge(
            "voxgate_event_loop_lag_max_seconds", "Worst event-loop lag seen", registry=r
        )

        self.active_calls = Gauge(
            "voxgate_active_calls", "Phone calls currently connected", ["provider"], registry=r
        )
        self.http_requests = Counter(
            "voxgate_http_requests_total",
            "HTTP requests answered, by route template (unmatched: no route)",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "voxgate_http_request_duration_seconds",
            "HTTP request time until the response body ended, by route template",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.job_queue_depth = Gauge(
            "voxgate_job_queue_depth",
            "Media jobs queued or running (shared database)",
            ["status"],
            registry=r,
        )

    def observe_ms(self, stage: str, ms: float | None) -> None:
        if ms is not None:
            self.stage_latency.labels(stage).observe(ms / 1000)


class LoopLagMonitor:
    """Measures how late the event loop wakes a sleeper: audio work on the loop shows up here first."""

    def __init__(self, metrics: Metrics | None = None, interval_s: float = 0.05) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_lag_s = 0.0
        self.last_lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    def reset(self) -> None:
        self.max_lag_s = 0.0

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.perf_counter() - start - self.interval_s)
            self.last_lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)
            if self.metrics is not None:
                self.metrics.loop_lag.set(lag)
                self.metrics.loop_lag_max.set(self.max_lag_s)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
