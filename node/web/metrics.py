"""Prometheus metrics, computed from the database at each scrape.

The node's work happens in several processes (listeners, workers, inference workers,
possibly on other machines), and all of it is recorded in the database, so reading
the database is the one view that is complete and survives restarts. Counters are
totals over what the database holds (retention removes old studies, which a
Prometheus server sees as a counter reset).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, func, select

from config.settings import Settings
from node.jobs.kinds import JobKind
from storage.models import Instance, Job, PredictionRecord, Study, StudyEvent, WorkerStatus
from storage.states import JobState, StudyLevel, StudyState
from storage.timeline import DELIVERED, DELIVERY_FAILED, NOTIFIED, NOTIFY_FAILED, epoch

INFERENCE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
END_TO_END_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


def _histogram(name: str, documentation: str, values: Sequence[float], buckets: Sequence[float]) -> Metric:
    counts = []
    for bound in buckets:
        counts.append((str(float(bound)), sum(1 for v in values if v <= bound)))
    counts.append(("+Inf", len(values)))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], counts, sum_value=float(sum(values)))
    return family


class DatabaseCollector:
    """Collects the node's metrics from its database (a prometheus_client collector)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        with self._engine.connect() as conn:
            images = conn.execute(select(func.count()).select_from(Instance)).scalar() or 0
            studies = conn.execute(select(func.count()).select_from(Study)).scalar() or 0
            completed = conn.execute(select(func.count()).where(Study.completed_at.is_not(None))).scalar() or 0
            by_level = dict(conn.execute(select(Study.priority, func.count()).group_by(Study.priority)).all())
            by_state_of_study = dict(conn.execute(select(Study.state, func.count()).group_by(Study.state))
                                     .all())
            jobs = conn.execute(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)).all()
            oldest = conn.execute(select(Job.kind, func.min(Job.created_at))
                                  .where(Job.state == JobState.QUEUED, Job.run_after <= now).group_by(Job.kind)).all()
            inference = [float(a + b) for a, b in conn.execute(
                select(PredictionRecord.load_seconds, PredictionRecord.inference_seconds))]
            # End to end: a study's last image to its first delivery of that results version.
            delivered = conn.execute(
                select(Study.last_received_at, func.min(StudyEvent.at))
                .join(StudyEvent, StudyEvent.study_id == Study.id)
                .where(StudyEvent.step == DELIVERED, StudyEvent.results_version == Study.results_version)
                .group_by(Study.id, Study.last_received_at)).all()
            events = dict(conn.execute(select(StudyEvent.step, func.count()).where(
                StudyEvent.step.in_((DELIVERY_FAILED, NOTIFIED, NOTIFY_FAILED))).group_by(StudyEvent.step)).all())
            gpus = conn.execute(select(WorkerStatus.name, WorkerStatus.device, WorkerStatus.gpu_memory_bytes)
                                .where(WorkerStatus.gpu_memory_bytes.is_not(None))).all()

        yield CounterMetricFamily("ainode_images_received", "Images received and kept.", value=images)
        yield CounterMetricFamily("ainode_studies_received", "Studies received.", value=studies)
        yield CounterMetricFamily("ainode_studies_completed", "Studies completed (work decided).", value=completed)
        levels = GaugeMetricFamily("ainode_studies_by_level", "Studies at each worklist level.", labels=["level"])
        for level in StudyLevel:
            levels.add_metric([level], by_level.get(level, 0))
        yield levels
        states = GaugeMetricFamily("ainode_studies_by_state", "Studies in each state of their lifecycle.",
                                   labels=["state"])
        for study_state in StudyState:
            states.add_metric([study_state], by_state_of_study.get(study_state, 0))
        yield states
        by_state = GaugeMetricFamily("ainode_jobs", "Jobs by kind and state.", labels=["kind", "state"])
        seen = {(k, s): n for k, s, n in jobs}
        pipeline_kinds = {JobKind.INFER, JobKind.ENCODE, JobKind.SEND, JobKind.NOTIFY}
        for kind in sorted({k for k, _ in seen} | pipeline_kinds):
            for state in JobState:
                by_state.add_metric([kind, state], seen.get((kind, state), 0))
        yield by_state
        age = GaugeMetricFamily("ainode_queue_oldest_age_seconds",
                                "Age of the oldest job waiting to run, by kind (0: none waiting).", labels=["kind"])
        waiting = dict(oldest)
        for kind in sorted(set(waiting) | pipeline_kinds):
            age.add_metric([kind], max(0.0, now - waiting[kind]) if kind in waiting else 0.0)
        yield age
        yield _histogram("ainode_inference_seconds", "Series load plus model run time per prediction.",
                         inference, INFERENCE_BUCKETS)
        yield _histogram("ainode_end_to_end_seconds",
                         "A study's last image to its results delivered (quiet period included).",
                         [max(0.0, at - epoch(last)) for last, at in delivered], END_TO_END_BUCKETS)
        yield CounterMetricFamily("ainode_delivery_failures", "Failed delivery attempts.",
                                  value=events.get(DELIVERY_FAILED, 0))
        yield CounterMetricFamily("ainode_notifications_sent", "Notifications acknowledged.",
                                  value=events.get(NOTIFIED, 0))
        yield CounterMetricFamily("ainode_notification_failures", "Failed notification attempts.",
                                  value=events.get(NOTIFY_FAILED, 0))
        gpu = GaugeMetricFamily("ainode_gpu_memory_used_bytes",
                                "GPU memory held by each inference worker (as it last reported).",
                                labels=["worker", "device"])
        for name, device, used in gpus:
            gpu.add_metric([name, device], float(used or 0))
        yield gpu
        yield from _drift_metrics(self._engine)
        if self._settings.data_dir.exists():
            yield GaugeMetricFamily("ainode_disk_free_bytes", "Free space where images are kept.",
                                    value=shutil.disk_usage(self._settings.data_dir).free)


def _drift_metrics(engine: Engine) -> Iterator[Metric]:
    """Each model's drift signals as its last quality report computed them."""
    from node.quality.report import open_alerts, stored_all

    psi = GaugeMetricFamily("ainode_model_drift_psi",
                            "Population stability index of each drift signal, current window against the "
                            "reference (last quality report; absent: not enough cases).", labels=["model", "signal"])
    shifted = GaugeMetricFamily("ainode_model_drift_shifted",
                                "1 while a model's drift signal is past its threshold (an open drift alert).",
                                labels=["model", "signal"])
    alerts = {(a["model"], a["signal"]) for a in open_alerts(engine)}
    for report in stored_all(engine):
        for signal in report.get("drift", []):
            key = (report["model"], signal["signal"])
            if signal.get("psi") is not None:
                psi.add_metric(list(key), float(signal["psi"]))
            shifted.add_metric(list(key), 1.0 if key in alerts else 0.0)
    yield psi
    yield shifted


def metrics_text(settings: Settings, engine: Engine) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(settings, engine))
    return generate_latest(registry), CONTENT_TYPE_LATEST
