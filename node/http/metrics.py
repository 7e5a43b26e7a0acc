"""Prometheus metrics, counted from the index at each scrape (storage.counts): receivers and
workers run in other processes, so a counter in this one would see none of their work."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from ml.labels import LABELS
from storage.counts import count
from storage.feedback import FeedbackStore

P = "ichtriage_"


class NodeCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.feedback = FeedbackStore(engine)

    def collect(self) -> Iterator[Metric]:
        c = count(self.engine, LABELS)
        yield CounterMetricFamily(P + "instances_received", "instances stored (first copies)",
                                  value=c.instances)
        yield CounterMetricFamily(P + "instances_duplicate", "instances received again",
                                  value=c.duplicates)
        yield CounterMetricFamily(P + "instances_refused",
                                  "instances refused inside accepted associations",
                                  value=c.association_failures)
        yield _by(CounterMetricFamily(P + "associations", "accepted associations, by how "
                                      "they ended", labels=["state"]), c.associations)
        yield _by(GaugeMetricFamily(P + "series", "series by status", labels=["status"]),
                  c.series)
        yield _by(GaugeMetricFamily(P + "jobs", "jobs by status", labels=["status"]), c.jobs)
        yield GaugeMetricFamily(P + "queue_depth", "jobs queued or running",
                                value=c.queue_depth)
        yield CounterMetricFamily(P + "jobs_failed", "jobs that ended failed",
                                  value=c.jobs.get("failed", 0))
        job = GaugeMetricFamily(P + "job_seconds", "done jobs, start to finish: sum and count",
                                labels=["stat"])
        job.add_metric(["sum"], c.job_seconds_sum)
        job.add_metric(["count"], c.job_seconds_count)
        yield job
        yield _by(GaugeMetricFamily(P + "deliveries", "outbox deliveries by status",
                                    labels=["status"]), c.deliveries)
        yield GaugeMetricFamily(P + "outbox_backlog", "deliveries still pending",
                                value=c.deliveries.get("pending", 0))
        yield CounterMetricFamily(P + "results", "triage results", value=c.results)
        latency = GaugeMetricFamily(P + "result_latency_seconds", "last slice to result: "
                                    "sum and count", labels=["stat"])
        latency.add_metric(["sum"], c.latency_sum)
        latency.add_metric(["count"], c.latency_count)
        yield latency
        rate = GaugeMetricFamily(P + "positive_rate", "share of results calling each label",
                                 labels=["label"])
        for label in LABELS:
            rate.add_metric([label], c.positives.get(label, 0) / c.results if c.results else 0.0)
        yield rate
        agree = GaugeMetricFamily(P + "feedback_agreement", "share of radiologists' feedback "
                                  "that confirms the model's call", labels=["label"])
        judged = GaugeMetricFamily(P + "feedback_judged", "studies with feedback on a call",
                                   labels=["label"])
        for a in self.feedback.agreement():
            judged.add_metric([a.label], a.confirmed + a.corrected)
            if a.ratio is not None:
                agree.add_metric([a.label], a.ratio)
        yield agree
        yield judged


def _by(family: CounterMetricFamily | GaugeMetricFamily,
        values: dict[str, int]) -> CounterMetricFamily | GaugeMetricFamily:
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def registry_for(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(engine))
    return registry
