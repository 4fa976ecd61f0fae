"""Shadow mode over time: each start of the node records a route that enters or leaves
shadow mode (promoted to clinical, or back to shadow), with its model, so that when a
model's results began to reach radiologists is on record (``ainode route history``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from config.settings import Route
from storage.db import writing
from storage.models import RouteChange

log = logging.getLogger(__name__)


def describe_change(route: Route, before: bool | None) -> str | None:
    """The change for ``route`` from its last recorded shadow flag (None: never seen)."""
    mode = "shadow mode" if route.shadow else "clinical use"
    if before is None:
        return f"route {route.name} ({route.model}) starts in {mode}"
    if before and not route.shadow:
        return f"route {route.name} ({route.model}) promoted from shadow mode to clinical use"
    if not before and route.shadow:
        return f"route {route.name} ({route.model}) returned from clinical use to shadow mode"
    return None


def record_route_changes(engine: Engine, routes: Sequence[Route], now: float | None = None) -> list[str]:
    """Record (and log) each enabled route whose shadow flag differs from the last one
    recorded for it; the changes, in words."""
    changes = []
    with writing(engine) as conn:
        last: dict[str, bool] = {}
        for name, shadow in conn.execute(select(RouteChange.route, RouteChange.shadow).order_by(RouteChange.id)):
            last[name] = bool(shadow)
        for route in routes:
            if not route.enabled:
                continue
            detail = describe_change(route, last.get(route.name))
            if detail is None:
                continue
            conn.execute(insert(RouteChange).values(
                route=route.name, model=route.model, shadow=route.shadow, detail=detail[:200],
                at=now if now is not None else time.time()))
            changes.append(detail)
    for detail in changes:
        log.info("%s", detail)
    return changes


def route_history(engine: Engine) -> list[RouteChange]:
    with Session(engine) as session:
        rows = list(session.scalars(select(RouteChange).order_by(RouteChange.id)))
        session.expunge_all()
    return rows
