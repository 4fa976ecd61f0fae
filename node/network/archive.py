"""What asking an archive for studies gives, over DICOM (node.network.query) or
DICOMweb (node.network.wado): the studies it holds, how a retrieval went, or why it failed."""

from __future__ import annotations

from dataclasses import dataclass


class QueryFailed(RuntimeError):
    """The archive could not be asked, or answered with a failure (the message says which)."""


@dataclass(frozen=True)
class StudyMatch:
    """One study the archive holds, as its C-FIND response describes it."""

    study_instance_uid: str
    accession_number: str
    study_date: str
    modalities: tuple[str, ...]
    instances: int | None
    description: str


@dataclass(frozen=True)
class MoveOutcome:
    completed: int
    failed: int
    warning: int
