"""What the node holds: counts for `ainode status` and the API, and the files of a series."""

from __future__ import annotations

from typing import TypedDict

from sqlalchemy import Connection, Engine, func, select

from storage.models import Instance, Series, Study
from storage.states import StudyState


class Inventory(TypedDict):
    studies: int
    series: int
    instances: int
    bytes: int


def inventory(engine: Engine) -> Inventory:
    """Counts of stored studies, series and instances, and their size on disk."""
    with engine.connect() as conn:
        studies = conn.execute(select(func.count(Study.id))).scalar_one()
        series = conn.execute(select(func.count(Series.id))).scalar_one()
        instances, size = conn.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
        ).one()
    return Inventory(studies=studies, series=series, instances=instances, bytes=int(size))


def studies_by_state(engine: Engine) -> dict[StudyState, int]:
    """How many studies are in each state (every state, zero when none)."""
    with engine.connect() as conn:
        counted = dict(conn.execute(select(Study.state, func.count()).group_by(Study.state)).all())
    return {state: int(counted.get(state, 0)) for state in StudyState}


def series_files(engine: Engine, series_uid: str) -> list[str]:
    """The stored files of a series (relative to the data folder), by instance number."""
    with engine.connect() as conn:
        return list(conn.execute(
            select(Instance.path).join(Series, Instance.series_id == Series.id)
            .where(Series.series_instance_uid == series_uid)
            .order_by(Instance.instance_number, Instance.id)
        ).scalars())


def first_instance_path(conn: Connection, study_id: int) -> str | None:
    """One stored file of a study (the first received), relative to the data folder:
    where to read the study's patient and request attributes."""
    return conn.execute(select(Instance.path).join(Series, Instance.series_id == Series.id)
                        .where(Series.study_id == study_id).order_by(Instance.id).limit(1)).scalar()
