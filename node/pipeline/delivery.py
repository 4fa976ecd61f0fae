"""Results to the archive: the ``send`` job delivers one model's result objects of one
results version to one destination (C-STORE or STOW-RS), every instance's status
checked. Sending again makes the archive replace, not duplicate, what it has: the
objects' UIDs are deterministic."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, select

from config.settings import Destination, Settings
from node.jobs.context import JobContext, PermanentJobError, configured, current_study
from node.jobs.kinds import SendPayload, read_payload
from node.network.dicomweb import stow_rs
from node.network.scu import FAILURE, WARNING, destination_peer, send_files
from storage.files import FileStore
from storage.models import ResultObject
from storage.queue import ClaimedJob
from storage.timeline import DELIVERED, DELIVERY_FAILED, record_now

log = logging.getLogger(__name__)


class SendHandler:
    """The ``send`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._store = FileStore(settings.data_dir)

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(SendPayload, job)
        work = current_study(self._engine, job)
        destination = configured(self._settings.destinations, payload.destination, "destinations")
        with self._engine.connect() as conn:
            query = select(ResultObject.path, ResultObject.kind).where(
                ResultObject.study_id == work.study_id, ResultObject.model == payload.model,
                ResultObject.results_version == work.results_version)
            if payload.series:
                query = query.where(ResultObject.source_series_instance_uid.in_(payload.series))
            rows = conn.execute(query.order_by(ResultObject.id)).all()
        if not rows:
            raise PermanentJobError("no result objects are recorded for this results version")
        files = [self._store.absolute(path) for path, kind in rows if kind in destination.objects]
        if not files:
            log.info("study %s v%d: none of the %s results is of a kind %s receives (%s)",
                     work.study_instance_uid, work.results_version, payload.model, destination.name,
                     ", ".join(destination.objects))
            return
        try:
            if destination.type == "dicom":
                self._c_store(destination, files)
            else:
                stow_rs(destination.url or "", files, destination.timeout_s, destination.auth)
        except Exception as exc:
            record_now(self._engine, work.study_id, DELIVERY_FAILED,
                       f"{destination.name}: {type(exc).__name__}: {exc}", work.results_version)
            raise
        record_now(self._engine, work.study_id, DELIVERED,
                   f"{payload.model}: {len(files)} object(s) to {destination.name}", work.results_version)
        log.info("study %s v%d: %d %s result object(s) delivered to %s", work.study_instance_uid,
                 work.results_version, len(files), payload.model, destination.name)

    def _c_store(self, destination: Destination, files: list[Path]) -> None:
        peer = destination_peer(destination)
        report = send_files(files, peer, self._settings.ae_title, timeout_s=destination.timeout_s)
        for outcome in report.outcomes:
            if outcome.category == WARNING:
                log.warning("%s answered %s for %s", destination.name, outcome.detail, outcome.path.name)
        failures = [o for o in report.outcomes if o.category == FAILURE]
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(files)} object(s) not stored at "
                               f"{destination.name} ({peer}): {failures[0].detail}")
