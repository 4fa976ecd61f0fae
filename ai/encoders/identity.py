"""What a set of result objects is, and its UIDs: deterministic from the source study,
the model, its version and the study's results version, so that encoding again
(after a crash, or a resend) makes the very same objects and an archive keeps one copy."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from config.version import VERSION

#: Fixed namespace for name-based (version 5) UUIDs; the UIDs are 2.25.<uuid as integer>
#: (PS3.5 B.2), which needs no organisation root.
_NAMESPACE = uuid.UUID("5b0f1f62-3c7e-4f55-9d7a-8a7f0e1c2b11")

MANUFACTURER = "AINode"
#: The node's own version, first of the Software Versions of every object it makes.
SOFTWARE_VERSION = VERSION


@dataclass(frozen=True)
class ResultIdentity:
    study_instance_uid: str
    source_series_instance_uid: str
    model: str
    model_version: str
    results_version: int

    def uid(self, what: str) -> str:
        """The UID of one part of the result (``"seg-series"``, ``"sr-instance"``, ...)."""
        key = "|".join((self.study_instance_uid, self.source_series_instance_uid, self.model,
                        self.model_version, str(self.results_version), what))
        return f"2.25.{uuid.uuid5(_NAMESPACE, key).int}"

    def series_number(self, offset: int) -> int:
        """Series numbers from 9000 up, stable per model (viewers sort by them)."""
        return 9000 + (uuid.uuid5(_NAMESPACE, self.model).int % 90) * 10 + offset

    def series_description(self, kind: str) -> str:
        return f"AI {self.model} {self.model_version} {kind}"[:64]
