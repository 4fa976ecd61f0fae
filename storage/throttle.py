"""A rate shared by every process of the node: turns taken in the database, so that
several workers (and several machines on PostgreSQL) together keep to it."""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update

from storage.db import writing
from storage.models import Throttle


def take_turn(engine: Engine, name: str, interval_s: float, now: float) -> float | None:
    """Take ``name``'s turn now if it has come (the next one ``interval_s`` later) and
    return None; else return when it comes."""
    with writing(engine) as conn:
        next_at = conn.execute(select(Throttle.next_at).where(Throttle.name == name)
                               .with_for_update()).scalar_one_or_none()
        if next_at is None:
            conn.execute(insert(Throttle).values(name=name, next_at=now + interval_s))
            return None
        if now < next_at:
            return float(next_at)
        conn.execute(update(Throttle).where(Throttle.name == name).values(next_at=now + interval_s))
    return None
