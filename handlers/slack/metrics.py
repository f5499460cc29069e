"""Prometheus metrics: commands by action and result, ack and libvirt latency, host reachability.

A registry of our own, so tests and a second bot in one process never collide
on the global one, and nothing secret (tokens, text) is ever a label.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.hypervisor.pool import Pool
from bot.schedule.runs import RunTable

FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _HostsUp(Collector):
    """Read host reachability and open connections at scrape time, so the gauges are never stale."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("vmbot_host_up", "1 when the host answers, 0 while it is marked down", labels=["host"])
        for host in self.pool.names:
            g.add_metric([host], 0.0 if self.pool.status(host) else 1.0)
        yield g
        held = GaugeMetricFamily("vmbot_open_connections", "Host connections open now (at most [limits] open_hosts)")
        held.add_metric([], float(self.pool.open_count()))
        yield held


class _Jobs(Collector):
    """Each scheduled job's last success time, last result and duration, read from the last-run table."""

    def __init__(self, runs: RunTable) -> None:
        self.runs = runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        success = GaugeMetricFamily(
            "vmbot_job_last_success_timestamp_seconds", "When the job last succeeded (0: never)", labels=["job"]
        )
        result = GaugeMetricFamily("vmbot_job_last_result", "1 for the job's last result", labels=["job", "result"])
        took = GaugeMetricFamily("vmbot_job_last_duration_seconds", "How long the job's last run took", labels=["job"])
        for run in self.runs.all():
            ok = datetime.fromisoformat(run.last_success).timestamp() if run.last_success else 0.0
            success.add_metric([run.job], ok)
            result.add_metric([run.job, run.result or "never"], 1.0)
            took.add_metric([run.job], run.duration)
        yield from (success, result, took)


class Metrics:
    def __init__(self, pool: Pool, runs: RunTable | None = None) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter("vmbot_commands", "Commands answered", ["action", "result"], registry=self.registry)
        self.ack = Histogram(
            "vmbot_ack_seconds", "Time from request to HTTP answer", buckets=FAST, registry=self.registry
        )
        self.libvirt = Histogram(
            "vmbot_libvirt_call_seconds", "libvirt call latency", ["host"], buckets=FAST, registry=self.registry
        )
        self.registry.register(_HostsUp(pool))
        if runs is not None:
            self.registry.register(_Jobs(runs))
        pool.observers.append(lambda host, seconds: self.libvirt.labels(host).observe(seconds))
