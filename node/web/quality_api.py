"""The API of the trust loop: a model's quality report (metrics per version and route,
subgroups, course over time, drift signals, disagreements), its figures as SVG drawn
on the server, recomputing it on demand, and importing report-derived reference labels
(CSV or HL7 result). The model performance page (``/model?name=...``) reads these."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine, select

from config.settings import Settings
from node.jobs.kinds import QualityPayload, node_job
from node.quality.reference import import_labels
from node.quality.report import models_with_predictions, open_alerts, refresh, stored, stored_all
from storage.models import Job
from storage.queue import JobQueue
from storage.states import JobState
from storage.users import User

#: A model's name as the registry knows it; anything else is not looked up.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_MAX_IMPORT_BYTES = 20_000_000
#: An operator's recompute goes before other work, and is waited for this long.
RECOMPUTE_PRIORITY = 10
RECOMPUTE_WAIT_S = 600.0


class QualitySummary(BaseModel):
    model: str
    predictions: int
    computed_at: float | None = Field(description="when its report was last computed; null: never")
    seconds: float | None = Field(description="how long that took")
    references: dict[str, int] = Field(description="reference standards by source (csv, hl7, seg, feedback)")
    open_alerts: list[str] = Field(description="drift signals past their threshold")


class ReferenceImport(BaseModel):
    stored: int = Field(description="labels stored (a later word of a source on a case replaces its earlier one)")
    problems: list[str] = Field(description="lines or segments not used, by number and reason (never their content)")


def _model(name: str) -> str:
    if not _MODEL_NAME.fullmatch(name):
        raise HTTPException(404, "no such model")
    return name


def add_quality_routes(app: FastAPI, router: APIRouter, settings: Settings, engine: Engine, queue: JobQueue,
                       operator: Callable[..., User]) -> None:
    """Add the quality endpoints to ``router`` (already guarded by a token) and the
    model page to ``app``; recomputing and importing need ``operator``."""

    def report_of(name: str) -> dict[str, Any]:
        report = stored(engine, _model(name))
        if report is None:
            if name not in models_with_predictions(engine):
                raise HTTPException(404, f"no predictions of a model {name!r} on this node")
            report = computed(name)
        return report

    def computed(name: str) -> dict[str, Any]:
        """The model's report computed now by a worker process (a ``quality`` job, claimed
        before other work) while this one waits: the pages keep answering meanwhile (a
        report computed in this process held its interpreter for seconds). 504 when no
        worker finished it in time (it is stored when it is done)."""
        if settings.workers == 0:  # no worker beside this process: compute here
            return refresh(engine, settings, queue, name)
        job_id = queue.enqueue(node_job(QualityPayload(name, -time.time_ns()), max_attempts=1,
                                        priority=RECOMPUTE_PRIORITY))
        deadline = time.monotonic() + RECOMPUTE_WAIT_S
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                state, error = conn.execute(select(Job.state, Job.last_error).where(Job.id == job_id)).one()
            if state == JobState.SUCCEEDED:
                report = stored(engine, name)
                if report is not None:
                    return report
            if state == JobState.DEAD:
                raise HTTPException(500, f"the quality report could not be computed: {error or 'no reason recorded'}")
            time.sleep(0.1)
        raise HTTPException(504, f"the quality report was not computed within {RECOMPUTE_WAIT_S:g} s (job {job_id}; "
                                 "workers busy?): it is stored when it is done")

    @app.get("/model", response_class=HTMLResponse, include_in_schema=False)
    def model_page() -> str:
        """A model's performance (its name in the query: /model?name=...)."""
        return resources.files("node.web").joinpath("model.html").read_text(encoding="utf-8")

    @router.get("/api/quality", response_model=list[QualitySummary], tags=["quality"])
    def quality_models() -> list[QualitySummary]:
        """Every model with predictions on this node, with its report's date and open drift alerts."""
        reports = {r["model"]: r for r in stored_all(engine)}
        alerts: dict[str, list[str]] = {}
        for alert in open_alerts(engine):
            alerts.setdefault(alert["model"], []).append(alert["signal"])
        summaries = []
        for name in models_with_predictions(engine):
            r = reports.get(name, {})
            summaries.append(QualitySummary(
                model=name, predictions=int(r.get("predictions", 0)), computed_at=r.get("computed_at"),
                seconds=r.get("seconds"), references=dict(r.get("references", {})),
                open_alerts=sorted(alerts.get(name, []))))
        return summaries

    @router.get("/api/models/{name}/quality", tags=["quality"], responses={404: {"description": "no such model"}})
    def quality(name: str) -> dict[str, Any]:
        """The model's last quality report (computed now if it has none): per model version,
        route and shadow flag its findings' sensitivity, specificity, PPV, NPV (Wilson
        intervals) and ROC AUC (DeLong), its segments' Dice, HD95 and volume agreement,
        each subgroup's figures, the course over time, drift signals and disagreements."""
        return report_of(name)

    @router.post("/api/models/{name}/quality", tags=["quality"], dependencies=[Depends(operator)],
                 responses={404: {"description": "no such model"}, 403: {"description": "not an operator"}})
    def recompute(name: str) -> dict[str, Any]:
        """Recompute the model's report now (operators), raising or clearing drift alerts;
        computed by a worker process, so that the pages keep answering meanwhile."""
        if _model(name) not in models_with_predictions(engine):
            raise HTTPException(404, f"no predictions of a model {name!r} on this node")
        return computed(name)

    @router.get("/api/models/{name}/quality/figures/{figure}.svg", tags=["quality"], response_class=Response,
                responses={200: {"content": {"image/svg+xml": {}}}, 404: {"description": "no such figure"}})
    def figure(name: str, figure: Literal["roc", "volumes", "over-time"],
               of: Annotated[str | None, Query(max_length=64, description="the finding or segment")] = None,
               group: Annotated[int, Query(ge=0, le=10_000, description="index in the report's groups")] = 0,
               ) -> Response:
        """One of the report's plots, drawn on the server (matplotlib): a finding's ROC
        curve with the operating point, a segment's Bland-Altman plot of volumes, or
        each finding's rate and the agreement over time."""
        from node.quality import plots  # matplotlib: imported when a figure is first asked for

        report = report_of(name)
        if figure == "over-time":
            svg = plots.over_time_svg(report["over_time"])
        else:
            groups = report["groups"]
            if group >= len(groups):
                raise HTTPException(404, "no such group")
            items = groups[group]["findings" if figure == "roc" else "segments"]
            chosen = next((i for i in items if i["name"] == of), None)
            if chosen is None:
                raise HTTPException(404, f"no {'finding' if figure == 'roc' else 'segment'} {of!r} in that group")
            svg = plots.roc_svg(chosen) if figure == "roc" else plots.bland_altman_svg(chosen)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    @router.post("/api/references", response_model=ReferenceImport, tags=["quality"],
                 dependencies=[Depends(operator)], responses={403: {"description": "not an operator"},
                                                              413: {"description": "over 20 MB"}})
    async def references(request: Request,
                         kind: Annotated[Literal["csv", "hl7"], Query()] = "csv") -> ReferenceImport:
        """Import report-derived reference labels from the request body: a CSV
        (accession_number or study_instance_uid, finding, value) or an HL7 v2 result
        (ORU^R01, an OBX per finding)."""
        body = await request.body()
        if len(body) > _MAX_IMPORT_BYTES:
            raise HTTPException(413, f"a reference import is at most {_MAX_IMPORT_BYTES // 1_000_000} MB")
        result = await run_in_threadpool(import_labels, engine, body.decode("utf-8", errors="replace"), kind,
                                         f"API import ({kind})")
        return ReferenceImport(stored=result.stored, problems=result.problems)
