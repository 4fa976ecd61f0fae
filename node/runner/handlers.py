"""Which handler runs which kind of job: the wiring between the job framework and the
pipeline's steps (inference workers run ``infer`` only; see :mod:`node.runner.supervisor`)."""

from __future__ import annotations

from sqlalchemy import Engine

from config.settings import Settings
from node.jobs.context import Handler
from node.jobs.kinds import JobKind
from node.jobs.selftest import run_noop
from node.pipeline.delivery import SendHandler
from node.pipeline.encoding import EncodeHandler
from node.pipeline.lifecycle import queue_for
from node.pipeline.notification import NotificationHandler
from node.pipeline.priors import PriorsHandler
from node.pipeline.retrieval import RetrieveHandler
from node.quality.reference_seg import ReferenceHandler
from node.quality.report import AlertHandler, QualityHandler


def general_handlers(settings: Settings, engine: Engine) -> dict[JobKind, Handler]:
    """The job kinds a general worker runs, and their handlers."""
    return {
        JobKind.NOOP: run_noop,
        JobKind.ENCODE: EncodeHandler(settings, engine),
        JobKind.SEND: SendHandler(settings, engine),
        JobKind.NOTIFY: NotificationHandler(settings, engine),
        JobKind.QUALITY: QualityHandler(settings, engine, queue_for(settings, engine)),
        JobKind.ALERT: AlertHandler(settings, engine),
        JobKind.REFERENCE: ReferenceHandler(settings, engine),
        JobKind.RETRIEVE: RetrieveHandler(settings, engine, queue_for(settings, engine)),
        JobKind.PRIORS: PriorsHandler(settings, engine),
    }
