"""What a set of result objects is, and its UIDs: deterministic from the source study,
the model, its version and the study's results version, so that encoding again
(after a crash, or a resend) makes the very same objects and an archive keeps one copy."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from config.version import VERSION

#: Fixed namespace for name-based (version 5) UUIDs; the UIDs are 2.25.<uuid as integer>
#: (PS3.5 B.2), which needs no organisation root.
_NAMESPACE = uuid.UUID("5b0f1f62-3c7e-4f55-9d7a-8a7f0e1c2b11")

MANUFACTURER = "AINode"
#: The node's own version, first of the Software Versions of every object it makes.
SOFTWARE_VERSION = VERSION


@dataclass(frozen=True)
class ResultIdentity:
    """Who made a result from what. ``created_at`` (seconds since the epoch) is when
    the prediction was made: the objects' content date and time, the same on every
    encode. ``device_serial_number`` names the node that made them (its AE title)."""

    study_instance_uid: str
    source_series_instance_uid: str
    model: str
    model_version: str
    results_version: int
    source_series_number: int | None = None
    created_at: float = 0.0
    device_serial_number: str = "AINODE"
    #: The patient's ID as the source images give it: a segment's Tracking UID is the
    #: same in every study of the patient (the same lung across time); "" makes it the
    #: study's own.
    patient_id: str = ""

    def uid(self, what: str) -> str:
        """The UID of one part of the result (``"seg-series"``, ``"sr-instance"``, ...)."""
        key = "|".join((self.study_instance_uid, self.source_series_instance_uid, self.model,
                        self.model_version, str(self.results_version), what))
        return f"2.25.{uuid.uuid5(_NAMESPACE, key).int}"

    def tracking_uid(self, label: int) -> str:
        """The Tracking UID of segment ``label``: the same in the SEG's segment, the SR's
        measurement group and the key images, so that they can be joined (PS3.3 C.8.20.2,
        TID 1411 row 3), and, with a Patient ID, in every study of the patient the model
        reports on: a Tracking UID follows one finding or structure over time (PS3.3
        C.17.3.2.1), so the right lung of this year's study and of last year's are one."""
        if not self.patient_id:
            return self.uid(f"tracking-{label}")
        key = "|".join(("patient", self.patient_id, self.model, f"tracking-{label}"))
        return f"2.25.{uuid.uuid5(_NAMESPACE, key).int}"

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, UTC)

    def series_number(self, offset: int) -> int:
        """Series numbers that sort after the source's and tell results apart: one block
        of 10000 per model (from its name), the source series' number within it, then
        ``offset`` (1 SEG, 2 SR, 3 key images); e.g. series 3's SR of a model: NN0032."""
        model_block = 1 + uuid.uuid5(_NAMESPACE, self.model).int % 90
        source = self.source_series_number
        if source is None or source < 0:
            source = uuid.uuid5(_NAMESPACE, self.source_series_instance_uid).int % 1000
        return model_block * 10000 + (source % 1000) * 10 + offset

    def series_description(self, kind: str) -> str:
        source = "" if self.source_series_number is None else f" of series {self.source_series_number}"
        return f"AI {self.model} {self.model_version} {kind}{source}"[:64]


def equipment(identity: ResultIdentity) -> dict[str, Any]:
    """The keyword arguments every highdicom object of a result shares: who made it
    (manufacturer, model, software versions, device) and when (the prediction's time)."""
    created = identity.created
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": identity.model[:64],
            "software_versions": [SOFTWARE_VERSION, identity.model_version],
            "device_serial_number": identity.device_serial_number[:64],
            "content_date": created.date(), "content_time": created.time(),
            "series_date": created.date(), "series_time": created.time()}
