"""Qualifying a model on a local cohort before go-live (``ainode validate``).

The cohort is a folder of studies as DICOM files, with reference SEGs among them and
optionally a CSV of report-derived labels. It runs through the node's own steps in a
scratch node of its own (a data folder and SQLite database in a working folder, no
listener, no destinations, no notifications, so nothing reaches a clinical system):
the files are indexed as if received, each study completes, the model's routes choose
its series, the inference handler runs the model and records the prediction with its
case profile, reference SEGs are compared with the prediction's segments, the labels
are imported, and the quality report is computed by the same code as the API's. What
the report says is therefore what the node would say about the same cases.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.uid import SegmentationStorage
from sqlalchemy import Connection, Engine, select

from ai.registry import installed_models
from config.settings import Route, SeriesMatch, Settings
from node.jobs.kinds import JobKind
from node.jobs.worker import Worker
from node.pipeline.completion import CompletionPolicy, CompletionSweep
from node.pipeline.inference import InferenceRunner
from node.pipeline.lifecycle import queue_for
from node.quality.cohort import load_cases
from node.quality.html_report import report_html
from node.quality.reference import import_labels
from node.quality.reference_seg import PredictionsPending, ReferenceHandler
from node.quality.report import report_of
from storage.db import open_database
from storage.files import FileStore
from storage.header import read_file_header
from storage.ingest import StoredFile, record_instance
from storage.models import Job, PredictionRecord, Series, Study
from storage.states import JobState
from storage.timeline import COMPLETED, DECLINED, timeline

log = logging.getLogger(__name__)


class ValidationError(ValueError):
    """The validation cannot start: unknown model, empty cohort, unreadable labels."""


@dataclass
class CohortInventory:
    """What the cohort folder held."""

    studies: int = 0
    images: int = 0
    reference_segs: int = 0
    skipped: list[str] = field(default_factory=list)  # files not used, by path relative to the cohort and why


@dataclass
class Validation:
    report: dict[str, Any]
    inventory: CohortInventory
    #: Per study: ran, not applicable (why) or failed (why).
    outcomes: dict[str, str]
    problems: list[str] = field(default_factory=list)


def validation_settings(settings: Settings, model: str, work_dir: Path) -> Settings:
    """The node's settings for a scratch node in ``work_dir`` that runs ``model`` only:
    its enabled routes (or one route over the modalities it accepts), no destinations,
    no notifications, one attempt per job (a failure is reported, not retried)."""
    installed = installed_models(settings.model_folders)
    if model not in installed:
        raise ValidationError(f"no model {model!r} is installed (installed: {', '.join(sorted(installed)) or 'none'})")
    routes = [r.model_copy(update={"destinations": [], "shadow": False})
              for r in settings.routes if r.model == model and r.enabled]
    if not routes:
        accepts = installed[model].create(settings.models[model].options if model in settings.models else None).accepts
        routes = [Route(name="validation", model=model, select="thinnest",
                        match=SeriesMatch(modality=list(accepts.modalities), min_instances=accepts.min_slices))]
    return settings.model_copy(update={
        "data_dir": work_dir, "database_url": None, "routes": routes, "destinations": [], "notifications": [],
        "job_max_attempts": 1, "inference_memory_budget_mb": 0,
    })


def _index_cohort(cohort: Path, store: FileStore, engine: Engine) -> tuple[CohortInventory, list[str]]:
    """Copy every DICOM file of the cohort into the scratch store and record it, as the
    listener would; the reference SEGs' SOP Instance UIDs."""
    inventory, segs, studies = CohortInventory(), [], set()
    for path in sorted(p for p in cohort.rglob("*") if p.is_file()):
        shown = str(path.relative_to(cohort))
        try:
            header, ts = read_file_header(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported and skipped
            if path.suffix.lower() in (".dcm", ".dicom", "") and path.name != "DICOMDIR":
                inventory.skipped.append(f"{shown}: not a readable DICOM file ({type(exc).__name__})")
            continue
        relative = store.relative_path(header.study_instance_uid, header.series_instance_uid,
                                       header.sop_instance_uid)
        size = store.write(relative, [path.read_bytes()])
        reference = header.sop_class_uid == SegmentationStorage
        record_instance(engine, header, StoredFile(relative, size, ts, None), reopens=not reference)
        if reference:
            segs.append(header.sop_instance_uid)
            inventory.reference_segs += 1
        else:
            studies.add(header.study_instance_uid)
            inventory.images += 1
    inventory.studies = len(studies)
    return inventory, segs


def validate(settings: Settings, model: str, cohort: Path, work_dir: Path, device: str = "cpu",
             labels_csv: Path | None = None) -> Validation:
    """Run ``model`` over the cohort in a scratch node in ``work_dir`` and compute its
    quality report (no drift: a cohort has no course in time)."""
    if not cohort.is_dir():
        raise ValidationError(f"the cohort {cohort} is not a folder")
    labels_text = None
    if labels_csv is not None:
        try:
            labels_text = labels_csv.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ValidationError(f"cannot read the labels {labels_csv}: {exc.strerror}") from None
    vsettings = validation_settings(settings, model, work_dir)
    store = FileStore(work_dir)
    store.prepare()
    engine = open_database(vsettings.effective_database_url, vsettings.db_busy_timeout_ms)
    try:
        inventory, segs = _index_cohort(cohort, store, engine)
        if not inventory.images:
            raise ValidationError(f"the cohort {cohort} holds no DICOM images")
        queue = queue_for(vsettings, engine)
        # Every study is complete: the cohort is all there is.
        CompletionSweep(engine, queue, CompletionPolicy.from_settings(vsettings), store).run(
            datetime.now(UTC) + timedelta(days=365))
        runner = InferenceRunner.start(vsettings, engine, device, configured=True)
        worker = Worker("validate", vsettings, engine, queue, {JobKind.INFER: runner})
        while (job := queue.claim("validate", [JobKind.INFER])) is not None:
            worker.run_one(job)
        problems = []
        if labels_text is not None:
            imported = import_labels(engine, labels_text, "csv", f"validation labels {labels_csv.name}"
                                     if labels_csv else "validation labels")
            problems += [f"labels: {p}" for p in imported.problems]
        compare = ReferenceHandler(vsettings, engine)
        for uid in segs:
            try:
                compare.compare(uid)
            except PredictionsPending:  # its study's model did not run (failed): said below
                problems.append(f"reference SEG {uid}: its study has no prediction to compare with")
        with engine.connect() as conn:
            cases = load_cases(conn, model)
            outcomes = {study.study_instance_uid: _outcome(conn, study.id) for study in conn.execute(
                select(Study.id, Study.study_instance_uid).where(Study.id.in_(
                    select(Series.study_id).where(Series.modality != "SEG"))))}
        report = report_of(model, cases, None, time.time())
        return Validation(report, inventory, outcomes, problems)
    finally:
        engine.dispose()


def _outcome(conn: Connection, study_id: int) -> str:
    """ran, failed (why), or not applicable (why: no route, or the model declined)."""
    dead = conn.execute(select(Job.last_error).where(
        Job.study_id == study_id, Job.state == JobState.DEAD, Job.kind == JobKind.INFER)).scalars().all()
    if dead:
        return f"failed: {'; '.join(e or 'no reason recorded' for e in dead)}"
    if conn.execute(select(PredictionRecord.id).where(PredictionRecord.study_id == study_id)).first():
        return "ran"
    steps = timeline(conn, study_id)
    declined = [s.detail or "" for s in steps if s.step == DECLINED]
    if declined:
        return f"not applicable: {'; '.join(declined)}"
    return "not applicable: " + next((s.detail or "" for s in steps if s.step == COMPLETED), "no route took it")


def write_report(validation: Validation, report_dir: Path, cohort: Path) -> tuple[Path, Path]:
    """``report.json`` (the API's report with the cohort's inventory and outcomes) and
    ``report.html`` (the same figures, with plots) in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    document = {**validation.report, "cohort": {
        "path": str(cohort), "studies": validation.inventory.studies, "images": validation.inventory.images,
        "reference_segs": validation.inventory.reference_segs, "skipped": validation.inventory.skipped,
        "outcomes": validation.outcomes, "problems": validation.problems}}
    json_path, html_path = report_dir / "report.json", report_dir / "report.html"
    json_path.write_text(json.dumps(document, indent=1, allow_nan=False, default=_plain_number))
    html_path.write_text(report_html(document), encoding="utf-8")
    return json_path, html_path


def _plain_number(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON")
