"""DICOMweb STOW-RS on the API port (PS3.18 10.5): ``POST /dicomweb/studies`` and
``POST /dicomweb/studies/{study}``, ``multipart/related; type="application/dicom"``.

The same promise as C-STORE: an instance listed as stored is on disk (fsync, atomic
rename) and its row committed before the response is sent. The same limits
(max_instance_mb per part, the disk reserve) and the same rules for who may send (a
token of an operator or above, or api_token). The body is read as a stream, one part
in memory at a time. Each instance gets its own outcome in the standard response:
ReferencedSOPSequence for those kept, FailedSOPSequence with a Failure Reason for the
others; 200 when all were kept, 202 when some were, 409 when none was.

A request to ``/dicomweb/studies/{study}`` is a whole study: once its instances are
kept the study completes at once, without waiting for the quiet period. Instances
posted to ``/dicomweb/studies`` complete by the usual rules (a client may spread a
study over several requests).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool

from config.settings import Settings
from node.network.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    InstanceIntake,
    Refusal,
)
from node.network.listener import ACCEPTED_TRANSFER_SYNTAXES
from node.network.part10 import dataset_offset
from node.pipeline.completion import CompletionPolicy, CompletionSweep
from node.quality.seg_jobs import comparison_queuer
from storage.files import FileStore
from storage.header import InstanceHeader
from storage.queue import JobQueue
from storage.users import User

log = logging.getLogger(__name__)

#: PS3.18 10.5.3: a part whose transfer syntax the node does not accept.
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
#: Source AE title written in the file meta of instances received over DICOMweb.
SOURCE_AE = "DICOMWEB"
DICOM_JSON = "application/dicom+json"


@dataclass
class _Part:
    """One body part as it streams in."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    too_large: bool = False


@dataclass
class _Outcome:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    failure: int | None = None


def _boundary(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body (415 otherwise)."""
    main, *params = (p.strip() for p in content_type.split(";"))
    values = {}
    for param in params:
        key, _, value = param.partition("=")
        values[key.strip().lower()] = value.strip().strip('"')
    if main.lower() != "multipart/related" or not values.get("boundary"):
        raise HTTPException(415, 'STOW-RS takes multipart/related; type="application/dicom" with a boundary')
    if values.get("type", "application/dicom").lower() != "application/dicom":
        raise HTTPException(415, f"parts of type {values['type']!r} are not accepted; send application/dicom")
    return values["boundary"]


class StowReceiver:
    """Keeps the instances of STOW-RS requests (one per API process)."""

    def __init__(self, settings: Settings, engine: Engine, queue: JobQueue,
                 on_reference: Callable[[Connection, str], None] | None = None) -> None:
        store = FileStore(settings.data_dir)
        self._intake = InstanceIntake(settings, engine, store, "STOW-RS", on_reference)
        self._completion = CompletionSweep(engine, queue, CompletionPolicy.from_settings(settings), store)
        self.max_part_bytes = self._intake.max_instance_bytes

    def keep(self, part: _Part, study: str | None) -> _Outcome:
        """Keep one part; its outcome (the UIDs as far as they could be read)."""
        outcome = _Outcome("", "", "")
        if part.too_large:
            self._intake.size_refusal(len(part.data) + self.max_part_bytes + 1)  # logs the refusal
            outcome.failure = OUT_OF_RESOURCES
            return outcome
        kind = part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            log.warning("STOW-RS part refused: content type %r is not application/dicom", kind[:64])
            outcome.failure = CANNOT_UNDERSTAND
            return outcome
        try:
            start = dataset_offset(part.data)
            meta = dcmread(io.BytesIO(bytes(part.data[:start]))).file_meta
            transfer_syntax = str(meta.TransferSyntaxUID)
            outcome.sop_class_uid = str(meta.get("MediaStorageSOPClassUID", ""))
            outcome.sop_instance_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
        except Exception as exc:  # any parser error: the part is not a readable DICOM file
            log.warning("STOW-RS part refused: %s", str(exc)[:120] if isinstance(exc, ValueError)
                        else type(exc).__name__)
            outcome.failure = CANNOT_UNDERSTAND
            return outcome
        if transfer_syntax not in ACCEPTED_TRANSFER_SYNTAXES:
            log.warning("STOW-RS part refused: transfer syntax %s is not accepted", transfer_syntax[:64])
            outcome.failure = TRANSFER_SYNTAX_NOT_SUPPORTED
            return outcome
        dataset = memoryview(part.data)[start:]
        refusal = self._intake.size_refusal(len(dataset))
        if refusal is not None:
            outcome.failure = refusal.status
            return outcome
        header = self._intake.header(dataset, transfer_syntax, "a DICOMweb client")
        if isinstance(header, Refusal):
            outcome.failure = header.status
            return outcome
        outcome.sop_class_uid, outcome.sop_instance_uid = header.sop_class_uid, header.sop_instance_uid
        outcome.study_instance_uid = header.study_instance_uid
        failure = self._mismatch(header, outcome, meta, study)
        if failure is not None:
            outcome.failure = failure
            return outcome
        kept = self._intake.keep(header, dataset, transfer_syntax, None, SOURCE_AE)
        if kept is not None:
            outcome.failure = kept.status
        return outcome

    @staticmethod
    def _mismatch(header: InstanceHeader, outcome: _Outcome, meta: Dataset, study: str | None) -> int | None:
        if str(meta.get("MediaStorageSOPInstanceUID", header.sop_instance_uid)) != header.sop_instance_uid:
            log.warning("STOW-RS part refused: its file meta names another SOP Instance UID than its dataset")
            return CANNOT_UNDERSTAND
        if str(meta.get("MediaStorageSOPClassUID", header.sop_class_uid)) != header.sop_class_uid:
            log.warning("STOW-RS part refused: its file meta names another SOP Class than its dataset")
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        if study is not None and header.study_instance_uid != study:
            log.warning("STOW-RS part refused: instance %s belongs to another study than the request's",
                        header.sop_instance_uid)
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        return None

    def keep_safely(self, part: _Part, study: str | None) -> _Outcome:
        """:meth:`keep`, an unexpected error answered as a processing failure of that
        instance (the request and the node go on)."""
        try:
            return self.keep(part, study)
        except Exception as exc:
            log.error("STOW-RS part failed unexpectedly (%s); answered 0x0110", type(exc).__name__)
            log.debug("STOW-RS failure detail", exc_info=True)
            return _Outcome("", "", "", PROCESSING_FAILURE)

    def complete(self, study: str) -> bool:
        return self._completion.complete_now(study, "stow-rs")


def _response(outcomes: list[_Outcome], study: str | None) -> JSONResponse:
    body = Dataset()
    kept = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]

    def item(outcome: _Outcome) -> Dataset:
        ds = Dataset()
        ds.ReferencedSOPClassUID = outcome.sop_class_uid or None
        ds.ReferencedSOPInstanceUID = outcome.sop_instance_uid or None
        if outcome.failure is not None:
            ds.FailureReason = outcome.failure
        return ds
    if kept:
        body.ReferencedSOPSequence = [item(o) for o in kept]
    if failed:
        body.FailedSOPSequence = [item(o) for o in failed]
    status = 200 if not failed else 202 if kept else 409
    content: dict[str, Any] = body.to_json_dict()
    return JSONResponse(content, status_code=status, media_type=DICOM_JSON)


def add_stow_routes(app: FastAPI, settings: Settings, engine: Engine, queue: JobQueue,
                    sender: Callable[..., User]) -> None:
    """``sender``: the dependency that admits who may store (an operator or above). A SEG
    stored this way is a reference or corrected segmentation, compared like one sent
    over DICOM."""
    receiver = StowReceiver(settings, engine, queue, comparison_queuer(queue))

    async def store(request: Request, study: str | None, user: User) -> JSONResponse:
        boundary = _boundary(request.headers.get("content-type", ""))
        parts: list[_Part] = []
        finished: list[_Part] = []
        header_name = bytearray()
        header_value = bytearray()
        ended: list[bool] = []

        def on_part_begin() -> None:
            parts.append(_Part())

        def on_part_data(data: bytes, start: int, end: int) -> None:
            part = parts[-1]
            if part.too_large:
                return
            if len(part.data) + end - start > receiver.max_part_bytes:
                part.too_large = True
                part.data = bytearray()  # dropped: the limit holds the memory too
                return
            part.data += data[start:end]

        def on_header_field(data: bytes, start: int, end: int) -> None:
            header_name.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            header_value.extend(data[start:end])

        def on_header_end() -> None:
            parts[-1].headers[header_name.decode("latin-1").strip().lower()] = header_value.decode("latin-1").strip()
            header_name.clear()
            header_value.clear()

        def on_part_end() -> None:
            finished.append(parts[-1])

        def on_end() -> None:
            ended.append(True)

        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_end": on_end,
        })
        outcomes: list[_Outcome] = []
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                while finished:
                    outcomes.append(await run_in_threadpool(receiver.keep_safely, finished.pop(0), study))
            parser.finalize()
        except MultipartParseError:
            raise HTTPException(400, "the body is not a well-formed multipart/related message") from None
        if not parts:
            raise HTTPException(400, "the body holds no part")
        if not ended:  # torn: the last part never ended (what came before it is kept)
            if not any(o.failure is None for o in outcomes):
                raise HTTPException(400, "the body ends before its closing boundary")
            log.warning("STOW-RS body ends before its closing boundary; the parts before are kept")
            outcomes.append(_Outcome("", "", "", CANNOT_UNDERSTAND))
        kept = sum(1 for o in outcomes if o.failure is None)
        completed = False
        if study is not None and kept:
            completed = await run_in_threadpool(receiver.complete, study)
        log.info("STOW-RS by %s: %d instance(s) kept, %d refused%s", user.name, kept, len(outcomes) - kept,
                 "; the study completed (whole-study request)" if completed else "")
        return _response(outcomes, study)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "every instance kept"}, 202: {"description": "some kept, some refused"},
        409: {"description": "none kept"}, 415: {"description": "not multipart/related of application/dicom"}}

    @app.post("/dicomweb/studies", tags=["dicomweb"], responses=responses)
    async def store_instances(request: Request, user: User = Depends(sender)) -> JSONResponse:
        """STOW-RS: store instances of any studies (they complete by the usual rules)."""
        return await store(request, None, user)

    @app.post("/dicomweb/studies/{study}", tags=["dicomweb"], responses=responses)
    async def store_study(study: str, request: Request, user: User = Depends(sender)) -> JSONResponse:
        """STOW-RS: store one whole study, which completes once its instances are kept;
        instances of another study are refused."""
        return await store(request, study, user)
