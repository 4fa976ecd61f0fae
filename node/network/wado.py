"""An archive reached over DICOMweb (``[pacs] dicomweb_url``), with dicomweb-client:
studies found with QIDO-RS (PS3.18 10.6) and fetched with WADO-RS (10.4), each
instance kept through the same intake as C-STORE and STOW-RS (fsync, rename, commit)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from config.settings import PacsSettings
from node.network.archive import MoveOutcome, QueryFailed
from node.network.dicomweb import dicomweb_client
from node.network.intake import InstanceIntake
from node.network.part10 import dataset_offset


def _client(pacs: PacsSettings) -> DICOMwebClient:
    assert pacs.dicomweb_url is not None
    return dicomweb_client(pacs.dicomweb_url, pacs.auth, pacs.timeout_s)


def _failed(what: str, pacs: PacsSettings, exc: Exception) -> QueryFailed:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return QueryFailed(f"{what} to {pacs.ae_title} answered HTTP {exc.response.status_code}")
    return QueryFailed(f"{what} to {pacs.ae_title} failed: {type(exc).__name__}")


def search_studies(pacs: PacsSettings, fields: Sequence[str], keys: dict[str, str]) -> list[Dataset]:
    """The studies matching ``keys`` (attribute keywords, DICOM matching: ranges of dates,
    one modality), with ``fields``; raises :class:`QueryFailed`."""
    try:
        found = _client(pacs).search_for_studies(search_filters=dict(keys), fields=list(fields),
                                                 get_remaining=True)
    except (requests.RequestException, ValueError) as exc:
        raise _failed("QIDO-RS", pacs, exc) from None
    return [Dataset.from_json(item) for item in found]


def retrieve_study(pacs: PacsSettings, study_instance_uid: str, intake: InstanceIntake) -> MoveOutcome:
    """Fetch every instance of one study (WADO-RS, as the archive stores it) and keep
    each; the counts. Raises :class:`QueryFailed` when the archive fails or an instance
    cannot be kept (what was kept stays; a retry fetches the study again)."""
    kept = failed = 0
    try:
        for ds in _client(pacs).iter_study(study_instance_uid):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            data = buffer.getbuffer()
            start = dataset_offset(data)
            refusal = intake.keep_fetched(data[start:], str(ds.file_meta.TransferSyntaxUID), pacs.ae_title)
            if refusal is None:
                kept += 1
            else:
                failed += 1
    except (requests.RequestException, ValueError) as exc:
        raise _failed("WADO-RS", pacs, exc) from None
    if failed or not kept:
        raise QueryFailed(f"WADO-RS from {pacs.ae_title}: {kept} instance(s) kept, {failed} refused"
                          if kept or failed else f"WADO-RS from {pacs.ae_title}: the study has no instances")
    return MoveOutcome(kept, failed, 0)
