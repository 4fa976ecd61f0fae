"""The REST API, the web worklist and ``/metrics`` (FastAPI), served by its own
process of ``ainode serve`` on ``api_host:api_port`` (127.0.0.1:8080 by default).

Everything is read from the database, so the API shows what every process of the
node (and ``ainode worker`` machines) did. With ``api_token`` set, every endpoint
but ``/api/health`` and the worklist page itself asks for ``Authorization: Bearer
<token>``; the settings refuse an API bound beyond loopback without one.
"""

from __future__ import annotations

import hmac
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Engine, case, select

from ai.protocol import Finding
from config.settings import Settings
from config.version import VERSION
from node.jobs.kinds import JobKind
from node.network.httpclient import Unreachable, http_request
from node.pipeline.feedback import FeedbackError, FeedbackIn, FeedbackLine, give_feedback
from node.pipeline.key_image import key_image_png
from node.pipeline.lifecycle import STUDY_STEPS, queue_for
from node.pipeline.study_report import StudyResults, headline, study_results
from node.pipeline.triage import LEVELS, rank
from node.web.browser import SAME_ORIGIN_HEADER, SECURITY_HEADERS, BrowserGuard
from node.web.metrics import metrics_text
from node.web.quality_api import add_quality_routes
from node.web.stow import add_stow_routes
from storage.files import FileStore
from storage.models import Job, PredictionRecord, ResultObject, Series, Study
from storage.states import LIVE_JOB_STATES, JobState, StudyLevel, StudyState
from storage.timeline import RETRIED, epoch, record_now, timeline
from storage.users import Role, User, user_for_token, users_exist

log = logging.getLogger(__name__)

# --- response models (the OpenAPI schema is generated from these) ---------------------

Delivery = Literal["none", "pending", "delivered", "failed"]
MAX_ID = 2**63 - 1  # the largest row id the databases hold


class FindingView(BaseModel):
    """``assessment``: present, absent or indeterminate (could not judge: ``reason``
    says why, ``score`` may be null). ``present`` is kept for earlier clients."""

    model: str
    name: str
    score: float | None
    present: bool
    assessment: str
    reason: str = ""


class StudySummary(BaseModel):
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    modalities: list[str]
    state: StudyState = Field(description="receiving; complete (work queued); processing; done; failed (a job "
                                          "is dead); not_applicable (every model declined the study)")
    results_version: int
    priority: StudyLevel
    priority_reason: str | None
    requested_priority: str | None
    first_received_at: float = Field(description="seconds since the epoch (UTC)")
    last_received_at: float
    age_s: float = Field(description="seconds since the last image arrived")
    findings: list[FindingView] = Field(description="of the current results version")
    headline: list[str] = Field(default_factory=list,
                                description="the current version's main numbers, e.g. 'right lung volume 3177 mL'; "
                                            "* marks a value that is not reliable")
    shadow_results: int = Field(
        default=0, description="predictions of shadow routes (left out of findings and headline: not for "
                               "clinical reading; the study page shows them marked)")
    delivery: Delivery = Field(
        description="of the current results version's results: none (no destination or not yet made), "
                    "pending (queued or running), delivered, failed (a delivery is dead)")


class TimelineStep(BaseModel):
    step: str = Field(description="first_image, last_image, completed, superseded, prioritized, inferred, declined, "
                                  "encoded, delivered, delivery_failed, notified, notify_failed")
    at: float
    detail: str | None
    results_version: int | None


class JobView(BaseModel):
    id: int
    kind: JobKind
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    study_instance_uid: str | None
    results_version: int | None
    last_error: str | None
    created_at: float
    run_after: float
    finished_at: float | None


class StudyDetail(StudySummary):
    timeline: list[TimelineStep]
    jobs: list[JobView]


class RetryResult(BaseModel):
    requeued: int
    by: str = Field(default="", description="the user who asked")


class ModelView(BaseModel):
    name: str
    version: str
    modalities: list[str]
    segments: list[str]
    findings: list[str]
    source: str
    routes: list[str]


class DestinationView(BaseModel):
    name: str
    type: Literal["dicom", "dicomweb"]
    address: str
    objects: list[str]


class EchoResult(BaseModel):
    name: str
    ok: bool
    message: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: str
    disk_free_bytes: int
    jobs: dict[str, dict[JobState, int]]


# --- the application ---------------------------------------------------------------------

def _summary_rows(engine: Engine, studies: list[Any]) -> list[StudySummary]:
    if not studies:
        return []
    ids = [s.id for s in studies]
    now = time.time()
    with engine.connect() as conn:
        modalities: dict[int, set[str]] = {}
        for study_id, modality in conn.execute(select(Series.study_id, Series.modality)
                                               .where(Series.study_id.in_(ids))):
            if modality:
                modalities.setdefault(study_id, set()).add(modality)
        findings: dict[int, list[FindingView]] = {}
        numbers: dict[int, list[str]] = {}
        versions = {s.id: s.results_version for s in studies}
        shadow: dict[int, int] = {}
        for p in conn.execute(select(PredictionRecord.study_id, PredictionRecord.results_version,
                                     PredictionRecord.model, PredictionRecord.findings,
                                     PredictionRecord.measurements, PredictionRecord.shadow)
                              .where(PredictionRecord.study_id.in_(ids)).order_by(PredictionRecord.id)):
            if p.results_version == versions[p.study_id] and p.shadow:
                shadow[p.study_id] = shadow.get(p.study_id, 0) + 1
            elif p.results_version == versions[p.study_id]:
                numbers.setdefault(p.study_id, []).extend(headline(p.measurements))
                findings.setdefault(p.study_id, []).extend(
                    FindingView(model=p.model, name=f.name, score=f.score, present=f.present,
                                assessment=str(f.assessment), reason=f.reason)
                    for f in map(Finding.from_json, p.findings))
        work: dict[int, list[tuple[str, str]]] = {}  # the current version's (kind, state)
        for job_study, version, kind, state in conn.execute(
                select(Job.study_id, Job.results_version, Job.kind, Job.state)
                .where(Job.study_id.in_(ids), Job.kind.in_(STUDY_STEPS))):
            if job_study is not None and version == versions[job_study]:
                work.setdefault(job_study, []).append((kind, state))

    def delivery(study_id: int) -> Delivery:
        jobs = work.get(study_id, [])
        if any(state == JobState.DEAD for _, state in jobs):
            return "failed"
        if any(state in LIVE_JOB_STATES for _, state in jobs):
            return "pending"
        return "delivered" if any(kind == JobKind.SEND for kind, _ in jobs) else "none"

    return [StudySummary(
        study_instance_uid=s.study_instance_uid, accession_number=s.accession_number, study_date=s.study_date,
        study_description=s.study_description, modalities=sorted(modalities.get(s.id, ())), state=s.state,
        results_version=s.results_version, priority=StudyLevel.of(s.priority),
        priority_reason=s.priority_reason, requested_priority=s.requested_priority,
        first_received_at=epoch(s.first_received_at), last_received_at=epoch(s.last_received_at),
        age_s=max(0.0, now - epoch(s.last_received_at)), findings=findings.get(s.id, []),
        headline=numbers.get(s.id, [])[:6], shadow_results=shadow.get(s.id, 0), delivery=delivery(s.id),
    ) for s in studies]


def _job_view(row: Any, uids: dict[int, str]) -> JobView:
    return JobView(id=row.id, kind=row.kind, state=row.state, priority=row.priority, attempts=row.attempts,
                   max_attempts=row.max_attempts, study_instance_uid=uids.get(row.study_id),
                   results_version=row.results_version, last_error=row.last_error, created_at=row.created_at,
                   run_after=row.run_after, finished_at=row.finished_at)


def _jobs(engine: Engine, where: Any, limit: int) -> list[JobView]:
    with engine.connect() as conn:
        rows = conn.execute(select(Job).where(where).order_by(Job.id.desc()).limit(limit)).all()
        ids = {r.study_id for r in rows if r.study_id is not None}
        uids = dict(conn.execute(select(Study.id, Study.study_instance_uid).where(Study.id.in_(ids))).all())
    return [_job_view(r, uids) for r in rows]


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The API for one node's settings and database."""
    # No /docs page (it would load scripts from a public CDN into the origin that
    # keeps the token) and no trailing-slash redirects (their Location is built from Host).
    app = FastAPI(
        title="AINode", version=VERSION,
        description="Worklist, study timelines, jobs, models and destinations of an AINode, and its metrics. "
                    f"Requests that change something send the bearer token or the header {SAME_ORIGIN_HEADER}: 1.",
        docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False,
    )
    token = settings.api_token.get_secret_value() if settings.api_token else None
    queue = queue_for(settings, engine)
    store = FileStore(settings.data_dir)
    guard = BrowserGuard.from_settings(settings)

    def caller(request: Request) -> User | None:
        """Who sent the request: the holder of api_token (an admin), a named user by
        their token, or None (no token, or not a valid one). Looked up once per request
        (the browser guard and the endpoint's dependency both ask)."""
        if hasattr(request.state, "caller"):
            known: User | None = request.state.caller
            return known
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        user = None
        if scheme.lower() == "bearer" and value.strip():
            if token is not None and hmac.compare_digest(value.strip().encode(), token.encode()):
                user = User("api_token", Role.ADMIN)
            else:
                user = user_for_token(engine, value.strip())
        request.state.caller = user
        return user

    def has_token(request: Request) -> bool:
        return caller(request) is not None

    def authorized(request: Request) -> User:
        """The caller; anonymous (as an admin on loopback) only while neither api_token
        nor any named user is set up."""
        user = caller(request)
        if user is not None:
            return user
        if token is None and not users_exist(engine):
            return User("local", Role.ADMIN)
        raise HTTPException(401, "a valid bearer token is required (api_token, or a user's: ainode users add)",
                            headers={"WWW-Authenticate": "Bearer"})

    # Dependencies as defaults, not in Annotated: these annotations are strings (PEP 563)
    # that FastAPI resolves in the module, where these local functions are not.
    def role(least: Role) -> Callable[[User], User]:
        def check(user: User = Depends(authorized)) -> User:
            if user.role < least:
                raise HTTPException(403, f"{user.name} is a {user.role}; this needs a {least} or above")
            return user
        return check

    @app.middleware("http")
    async def browser_guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refusal = guard.refusal(request.method, request.headers, has_token(request))
        if refusal is not None:
            status, detail = refusal
            response: Response = JSONResponse({"detail": detail}, status_code=status)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    protected = APIRouter(dependencies=[Depends(authorized)])

    @protected.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page() -> str:
        return resources.files("node.web").joinpath("worklist.html").read_text(encoding="utf-8")

    @app.get("/study", response_class=HTMLResponse, include_in_schema=False)
    def study_page() -> str:
        """One study's results (its UID in the query: /study?uid=...); the data comes from the API."""
        return resources.files("node.web").joinpath("study.html").read_text(encoding="utf-8")

    @app.get("/pages.js", include_in_schema=False)
    def page_script() -> Response:
        """What the pages share (the token, requests, DOM helpers)."""
        return Response(resources.files("node.web").joinpath("pages.js").read_text(encoding="utf-8"),
                        media_type="text/javascript")

    @app.get("/api/health", response_model=Health, tags=["node"])
    def health() -> Health:
        """Whether the node's database answers, its free disk space and its jobs (no token needed)."""
        status: Literal["ok", "degraded"] = "ok"
        try:
            jobs, database = queue.counts(), "ok"
        except Exception as exc:
            jobs, database, status = {}, f"unavailable ({type(exc).__name__})", "degraded"
        free = shutil.disk_usage(settings.data_dir).free if settings.data_dir.exists() else 0
        return Health(status=status, version=VERSION, database=database, disk_free_bytes=free, jobs=jobs)

    @protected.get("/api/studies", response_model=list[StudySummary], tags=["worklist"])
    def studies(
        priority: Annotated[list[StudyLevel] | None, Query()] = None,
        state: Annotated[list[StudyState] | None, Query()] = None,
        accession_number: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[StudySummary]:
        """The worklist: most urgent first, then the longest waiting."""
        query = select(Study)
        if priority:
            query = query.where(Study.priority.in_(priority))
        if state:
            query = query.where(Study.state.in_(state))
        if accession_number:
            query = query.where(Study.accession_number == accession_number)
        with engine.connect() as conn:
            level = case({name: rank(name) for name in LEVELS}, value=Study.priority, else_=0)
            rows = list(conn.execute(query.order_by(level.desc(), Study.last_received_at).limit(limit)).all())
        return _summary_rows(engine, rows)

    @protected.get("/api/studies/{study_instance_uid}", response_model=StudyDetail, tags=["worklist"],
             responses={404: {"description": "no such study"}})
    def study(study_instance_uid: str) -> StudyDetail:
        """One study: its summary, the time of each step, and its jobs."""
        with engine.connect() as conn:
            row = conn.execute(select(Study).where(Study.study_instance_uid == study_instance_uid)).one_or_none()
            if row is None:
                raise HTTPException(404, "no such study")
            steps = timeline(conn, row.id)
        [summary] = _summary_rows(engine, [row])
        return StudyDetail(**summary.model_dump(),
                           timeline=[TimelineStep(step=s.step, at=s.at, detail=s.detail,
                                                  results_version=s.results_version) for s in steps],
                           jobs=_jobs(engine, Job.study_id == row.id, 200))

    @protected.get("/api/studies/{study_instance_uid}/results", response_model=StudyResults, tags=["worklist"],
                   responses={404: {"description": "no such study"}})
    def results(study_instance_uid: str) -> StudyResults:
        """One study's results: the series each model used and why, each measurement with
        its unit and reliability, each finding, the result objects, timeline and jobs."""
        with engine.connect() as conn:
            report = study_results(conn, study_instance_uid, settings.routes)
        if report is None:
            raise HTTPException(404, "no such study")
        return report

    radiologist = role(Role.RADIOLOGIST)

    @protected.post("/api/predictions/{prediction_id}/feedback", response_model=FeedbackLine, tags=["feedback"],
                    responses={404: {"description": "no such prediction"}, 403: {"description": "not a radiologist"},
                               422: {"description": "no such finding, segment or lesion"}})
    def feedback(prediction_id: int, given: FeedbackIn, user: User = Depends(radiologist)) -> FeedbackLine:
        """Agree, disagree or correct one finding, segment or lesion of a prediction, with a
        reason (radiologists and above); recorded with the user's name."""
        try:
            if not 1 <= prediction_id <= MAX_ID:
                raise KeyError(prediction_id)
            return give_feedback(engine, prediction_id, given, user)
        except KeyError:
            raise HTTPException(404, f"no prediction {prediction_id}") from None
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from None

    @protected.get("/api/studies/{study_instance_uid}/key-images/{prediction_id}.png", tags=["worklist"],
                   response_class=Response,
                   responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such image"}})
    def key_image(study_instance_uid: str, prediction_id: int,
                  slice: Annotated[int | None, Query(ge=0, le=100_000)] = None,
                  explanation: Annotated[str | None, Query(max_length=200)] = None) -> Response:
        """The outlines of a prediction over its source slice, with the values; or,
        with ``explanation`` (a map's name), that explanation map over its slice (PNG)."""
        png = key_image_png(engine, store, study_instance_uid, prediction_id, slice, explanation) \
            if 1 <= prediction_id <= MAX_ID else None
        if png is None:
            raise HTTPException(404, "no key image: no label map or no such map, or its source images are gone")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @protected.get("/api/studies/{study_instance_uid}/objects/{sop_instance_uid}", tags=["worklist"],
                   response_class=Response,
                   responses={200: {"content": {"application/dicom": {}}}, 404: {"description": "no such object"}})
    def result_object(study_instance_uid: str, sop_instance_uid: str) -> Response:
        """A result object (SEG, SR or key image) the node made, as a DICOM file."""
        with engine.connect() as conn:
            path = conn.execute(select(ResultObject.path).join(Study, ResultObject.study_id == Study.id).where(
                Study.study_instance_uid == study_instance_uid,
                ResultObject.sop_instance_uid == sop_instance_uid)).scalar_one_or_none()
        if path is None or not store.absolute(path).exists():
            raise HTTPException(404, "no such result object")
        return Response(store.absolute(path).read_bytes(), media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{sop_instance_uid}.dcm"'})

    @protected.get("/api/jobs", response_model=list[JobView], tags=["jobs"])
    def jobs(
        state: Annotated[list[JobState] | None, Query()] = None,
        kind: Annotated[list[JobKind] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[JobView]:
        """Jobs, newest first."""
        where: ColumnElement[bool] = Job.id.is_not(None)
        if state:
            where = where & Job.state.in_(state)
        if kind:
            where = where & Job.kind.in_(kind)
        return _jobs(engine, where, limit)

    @protected.get("/api/dead-letters", response_model=list[JobView], tags=["jobs"])
    def dead_letters(limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[JobView]:
        """Jobs that failed for good (or too often), waiting for a person."""
        return _jobs(engine, Job.state == JobState.DEAD, limit)

    operator = role(Role.OPERATOR)

    @protected.post("/api/jobs/{job_id}/retry", response_model=RetryResult, tags=["jobs"],
              responses={404: {"description": "no such job, or it is running"},
                         403: {"description": "not an operator"}})
    def retry(job_id: int, user: User = Depends(operator)) -> RetryResult:
        """Run a dead, waiting or succeeded job again, attempts reset (operators and admins);
        the study's timeline records who."""
        n = queue.retry(job_id=job_id) if 1 <= job_id <= MAX_ID else 0
        if n == 0:
            raise HTTPException(404, f"job {job_id} does not exist or is running")
        with engine.connect() as conn:
            job = conn.execute(select(Job.study_id, Job.kind, Job.results_version).where(Job.id == job_id)).first()
        if job is not None and job.study_id is not None:
            record_now(engine, job.study_id, RETRIED, f"{job.kind} job {job_id} retried by {user.name} ({user.role})",
                       job.results_version)
        log.info("job %d retried by %s (%s)", job_id, user.name, user.role)
        return RetryResult(requeued=n, by=user.name)

    @protected.get("/api/models", response_model=list[ModelView], tags=["configuration"])
    def models() -> list[ModelView]:
        """The models installed on this machine, and the routes that use them."""
        from ai.registry import installed_models

        found = []
        for name, model in sorted(installed_models(settings.model_folders).items()):
            instance = model.create(settings.models[name].options if name in settings.models else None)
            found.append(ModelView(
                name=name, version=instance.version, modalities=list(instance.accepts.modalities),
                segments=[s.name for s in instance.outputs.segments],
                findings=[f.name for f in instance.outputs.findings], source=model.source,
                routes=[r.name for r in settings.routes if r.model == name and r.enabled]))
        return found

    @protected.get("/api/destinations", response_model=list[DestinationView], tags=["configuration"])
    def destinations() -> list[DestinationView]:
        """Where results are sent."""
        return [DestinationView(name=d.name, type=d.type, objects=list(d.objects),
                                address=(f"{d.ae_title}@{d.host}:{d.port}" if d.type == "dicom" else d.url or ""))
                for d in settings.destinations]

    @protected.post("/api/destinations/{name}/echo", response_model=EchoResult, tags=["configuration"],
              responses={404: {"description": "no such destination"}, 403: {"description": "not an operator"}},
              dependencies=[Depends(operator)])
    def echo(name: str) -> EchoResult:
        """Check a destination now: C-ECHO for DICOM, an HTTP request for DICOMweb."""
        from node.network.scu import destination_peer
        from node.network.scu import echo as c_echo
        from node.network.tls import TlsConfigError

        destination = next((d for d in settings.destinations if d.name == name), None)
        if destination is None:
            raise HTTPException(404, f"no destination {name!r}")
        if destination.type == "dicom":
            try:
                ok, message = c_echo(destination_peer(destination), settings.ae_title,
                                     timeout_s=min(destination.timeout_s, 10.0))
            except TlsConfigError as exc:
                ok, message = False, str(exc)
        else:
            ok, message = _http_check(destination.url or "", min(destination.timeout_s, 10.0))
        return EchoResult(name=name, ok=ok, message=message)

    @protected.get("/metrics", tags=["node"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Prometheus metrics, computed from the database at each scrape."""
        body, content_type = metrics_text(settings, engine)
        return Response(body, media_type=content_type)

    add_quality_routes(app, protected, settings, engine, queue, operator)
    add_stow_routes(app, settings, engine, queue, operator)
    app.include_router(protected)
    return app


def _http_check(url: str, timeout_s: float) -> tuple[bool, str]:
    try:
        status, _ = http_request(url.rstrip("/") + "/studies?limit=1", timeout_s=timeout_s)
    except Unreachable as exc:
        return False, f"unreachable: {exc}"
    return status < 500, f"HTTP {status}"

