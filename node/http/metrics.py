"""Prometheus metrics, counted from the index at each scrape (storage.counts) and from the
counters the receiving processes keep in SQL (storage.node_counters): receivers and workers
run in other processes (workers perhaps on other hosts), so a counter in this one would see
none of their work."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from ml.labels import LABELS
from storage.counts import Histogram, count
from storage.feedback import FeedbackStore
from storage.node_counters import ASSOCIATIONS_REJECTED, STORES_REFUSED, NodeCounters
from storage.worker_beats import WorkerBeats

P = "ichtriage_"


class NodeCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.feedback = FeedbackStore(engine)
        self.counters = NodeCounters(engine)
        self.beats = WorkerBeats(engine)

    def collect(self) -> Iterator[Metric]:
        c = count(self.engine, LABELS)
        yield CounterMetricFamily(P + "instances_received", "instances stored (first copies; "
                                  "the node's own SRs and key images included)",
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
        yield _histogram(P + "job_seconds", "done jobs, claimed to finished", c.job_seconds)
        yield _by(GaugeMetricFamily(P + "deliveries", "outbox deliveries by status",
                                    labels=["status"]), c.deliveries)
        yield GaugeMetricFamily(P + "outbox_backlog", "deliveries still pending",
                                value=c.deliveries.get("pending", 0))
        yield CounterMetricFamily(P + "results", "triage results", value=c.results)
        yield _histogram(P + "result_latency_seconds", "last slice received to result",
                         c.latency)
        yield _histogram(P + "inference_seconds", "the model's own time per series (slices "
                         "in, probabilities out)", c.inference)
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
        words = CounterMetricFamily(P + "feedback_verdicts", "radiologists' words on a result, "
                                    "by label and verdict (confirm or correct): agreement over "
                                    "a window is rate(confirm) / rate(confirm + correct)",
                                    labels=["label", "verdict"])
        for (label, verdict), n in sorted(self.feedback.verdict_totals().items()):
            words.add_metric([label, verdict], n)
        yield words
        yield from self._other_processes()

    def _other_processes(self) -> Iterator[Metric]:
        kept = self.counters.read()
        yield _by(CounterMetricFamily(P + "associations_rejected", "associations rejected "
                                      "(A-ASSOCIATE-RJ), by reason", labels=["reason"]),
                  kept.get(ASSOCIATIONS_REJECTED, {}))
        yield _by(CounterMetricFamily(P + "stores_refused", "C-STOREs answered with a failure, "
                                      "by DIMSE status", labels=["status"]),
                  kept.get(STORES_REFUSED, {}))
        alive = self.beats.liveness()
        yield GaugeMetricFamily(P + "workers_alive", "triage workers with a fresh heartbeat",
                                value=alive.beating)


def _by(family: CounterMetricFamily | GaugeMetricFamily,
        values: dict[str, int]) -> CounterMetricFamily | GaugeMetricFamily:
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _histogram(name: str, documentation: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(f"{bound:g}", float(n)) for bound, n in h.buckets]
    buckets.append(("+Inf", float(h.count)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=h.sum)


def registry_for(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(engine))
    return registry
