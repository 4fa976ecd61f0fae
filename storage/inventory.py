"""What the node holds: counts for `ainode status` and the API."""

from __future__ import annotations

from typing import TypedDict

from sqlalchemy import Engine, func, select

from storage.models import Instance, Series, Study


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
