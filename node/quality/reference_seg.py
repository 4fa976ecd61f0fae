"""Reference and corrected segmentations sent to the node as DICOM SEG.

A workstation that corrects AINode's SEG, or a reader who segments the study, sends the
result back. The SEG is recognised by the series it references (the source images, or
AINode's own SEG of them), its segments are matched to the model's by label or coded
property type (and laterality), and each pair is compared on the source grid (Dice,
HD95, volumes). The comparison is kept with the prediction and shown in the study's
timeline. AINode's own SEGs coming back from an archive are recognised and left alone.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from ai.labelmap import LabelMap
from ai.protocol import SegmentSpec, outputs_from_dict
from config.settings import Settings
from node.jobs.context import JobContext
from node.jobs.kinds import JobKind, ReferencePayload, read_payload
from node.quality.segmentation import NotOnTheGrid, ReferenceSegment, compare_masks, reference_segments
from storage.db import dialect_insert, writing
from storage.files import FileStore
from storage.models import Instance, Job, PredictionRecord, ResultObject, SegmentComparison, Series, Study
from storage.queue import ClaimedJob
from storage.states import JobState, StudyState
from storage.timeline import REFERENCE_COMPARED, record

log = logging.getLogger(__name__)


class PredictionsPending(RuntimeError):
    """The study's models have not run yet: the comparison is tried again later."""


def referenced_series(ds: Dataset) -> list[str]:
    """The series a SEG says it was made on (Referenced Series Sequence)."""
    found = []
    for item in ds.get("ReferencedSeriesSequence") or []:
        uid = str(item.get("SeriesInstanceUID", "") or "")
        if uid:
            found.append(uid)
    return found


def match(spec: SegmentSpec, references: Sequence[ReferenceSegment]) -> ReferenceSegment | None:
    """The reference segment for a model's segment: the same label (ignoring case),
    else the same coded property type with the same laterality."""
    for ref in references:
        if ref.label.strip().lower() == spec.name.strip().lower():
            return ref
    laterality = (spec.laterality.scheme, spec.laterality.value) if spec.laterality else None
    for ref in references:
        if ref.type_code == (spec.type.scheme, spec.type.value) and ref.laterality == laterality:
            return ref
    return None


class ReferenceHandler:
    """The ``reference`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._engine = engine
        self._store = FileStore(settings.data_dir)

    def _source_series(self, conn: Connection, ds: Dataset) -> list[str]:
        series = []
        for uid in referenced_series(ds):
            ours = conn.execute(select(ResultObject.source_series_instance_uid).where(
                ResultObject.series_instance_uid == uid)).scalar()
            series.append(ours or uid)
        return sorted(set(series))

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        self.compare(read_payload(ReferencePayload, job).sop_instance_uid)

    def compare(self, sop_instance_uid: str) -> None:
        """Compare the stored SEG ``sop_instance_uid`` with the current predictions on
        the series it references. Raises :class:`PredictionsPending` while the study's
        models have yet to run."""
        payload = ReferencePayload(sop_instance_uid)
        with self._engine.connect() as conn:
            row = conn.execute(select(Instance.path, Series.study_id).join(Series, Series.id == Instance.series_id)
                               .where(Instance.sop_instance_uid == payload.sop_instance_uid)).one_or_none()
            if row is None:
                log.info("reference SEG %s is no longer stored; nothing to compare", payload.sop_instance_uid)
                return
            ds = dcmread(self._store.absolute(row.path))
            ours = conn.execute(select(ResultObject.id).where(
                (ResultObject.sop_instance_uid == payload.sop_instance_uid)
                | (ResultObject.series_instance_uid == str(ds.SeriesInstanceUID)))).first()
            if ours is not None:
                log.info("SEG %s is one of the node's own results, come back; not a reference",
                         payload.sop_instance_uid)
                return
            sources = self._source_series(conn, ds)
            predictions = Session(bind=conn).scalars(
                select(PredictionRecord).join(Study, Study.id == PredictionRecord.study_id)
                .where(PredictionRecord.series_instance_uid.in_(sources),
                       PredictionRecord.results_version == Study.results_version,
                       PredictionRecord.labelmap_path.is_not(None))
                .order_by(PredictionRecord.id)).all()
            state = conn.execute(select(Study.state).where(Study.id == row.study_id)).scalar_one()
            pending = state in (StudyState.RECEIVING, StudyState.COMPLETE, StudyState.AWAITING_PRIORS,
                                StudyState.PROCESSING) or conn.execute(
                select(Job.id).where(Job.study_id == row.study_id, Job.kind == JobKind.INFER,
                                     Job.state.in_([JobState.QUEUED, JobState.RUNNING]))).first() is not None
        if not predictions:
            if pending:
                raise PredictionsPending("the study's models have not run yet; the SEG is compared once they have")
            with writing(self._engine) as conn:
                record(conn, row.study_id, REFERENCE_COMPARED,
                       f"a SEG was received (series {', '.join(s[-12:] for s in sources) or 'none named'}); "
                       "no prediction with segments on the series it references")
            return
        for prediction in predictions:
            self._compare(prediction, ds, payload.sop_instance_uid, row.study_id)

    def _compare(self, prediction: PredictionRecord, ds: Dataset, sop_uid: str, study_id: int) -> None:
        grid = LabelMap.from_npz(self._store.absolute(str(prediction.labelmap_path)))
        outputs = outputs_from_dict(prediction.outputs)
        try:
            references = reference_segments(ds, grid)
        except NotOnTheGrid as exc:
            with writing(self._engine) as conn:
                record(conn, study_id, REFERENCE_COMPARED,
                       f"a SEG was received for {prediction.model}'s series but cannot be compared: {exc}",
                       prediction.results_version)
            return
        lines, rows = [], []
        now = time.time()
        for spec in outputs.segments:
            ref = match(spec, references)
            if ref is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecations, inside it
                result = compare_masks(grid.array == spec.label, ref.mask, grid.spacing)
            rows.append(dict(prediction_id=prediction.id, segment=spec.name, reference_sop_instance_uid=sop_uid,
                             reference_segment=ref.label[:64], source="seg", dice=result.dice, hd95_mm=result.hd95_mm,
                             predicted_ml=result.predicted_ml, reference_ml=result.reference_ml, recorded_at=now))
            hd = f", HD95 {result.hd95_mm:.1f} mm" if result.hd95_mm is not None else ""
            lines.append(f"{spec.name} Dice {result.dice:.3f}{hd}, {result.predicted_ml:.0f} vs "
                         f"{result.reference_ml:.0f} ml")
        with writing(self._engine) as conn:
            if rows:
                statement = dialect_insert(conn, SegmentComparison.__table__)
                conn.execute(statement.on_conflict_do_update(
                    index_elements=["prediction_id", "segment", "reference_sop_instance_uid"],
                    set_={c: statement.excluded[c] for c in ("reference_segment", "dice", "hd95_mm", "predicted_ml",
                                                             "reference_ml", "recorded_at")}), rows)
            record(conn, study_id, REFERENCE_COMPARED,
                   f"reference SEG against {prediction.model} {prediction.model_version}: " + (
                       "; ".join(lines) if lines else "none of its segments is one of the model's "
                       f"({', '.join(r.label for r in references)[:120]})"), prediction.results_version)
        log.info("reference SEG %s compared with prediction %d (%s): %d segment(s)", sop_uid, prediction.id,
                 prediction.model, len(rows))
