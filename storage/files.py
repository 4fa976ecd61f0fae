"""The file store: received instances as DICOM Part 10 files, written durably.

A file reaches its final path only by an atomic rename of a fully written and
fsynced temporary file, followed by an fsync of the directory, so after any crash
a path holds either the complete old file, the complete new one, or nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PREAMBLE = b"\x00" * 128 + b"DICM"
SUFFIX = ".dcm"


def safe_name(uid: str) -> str:
    """A file-system-safe name for ``uid``: the UID itself when it is a well-formed
    UID, otherwise a hash, so that no value from the wire can leave the store."""
    if len(uid) <= 64 and _SAFE_UID.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def encode_file_meta(file_meta: FileMetaDataset) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group, ready to prepend."""
    buf = BytesIO()
    buf.write(PREAMBLE)
    write_file_meta_info(buf, file_meta, enforce_standard=True)  # type: ignore[arg-type]
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Instances under ``<root>/studies/<study>/<series>/<sop>.dcm``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.studies_dir = root / "studies"
        self.tmp_dir = root / "tmp"

    def prepare(self) -> None:
        """Create the folders (owner-only) and drop temporary files a crash left."""
        for folder in (self.root, self.studies_dir, self.tmp_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Where an instance lives, relative to the store root (as recorded in the DB)."""
        return "/".join(
            ("studies", safe_name(study_uid), safe_name(series_uid), safe_name(sop_uid) + SUFFIX)
        )

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def write(self, relative: str, parts: list[bytes | memoryview]) -> int:
        """Durably write ``parts`` (concatenated) at ``relative``; return the size.

        Raises ``OSError`` when the disk fails; then no file is left behind, neither
        the temporary one nor a partial one at the final path.
        """
        final = self.root / relative
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                        size += written
                os.fsync(fd)
            finally:
                os.close(fd)
            self._ensure_dir(final.parent)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    def _ensure_dir(self, folder: Path) -> None:
        if folder.is_dir():
            return
        self._ensure_dir(folder.parent)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            return
        _fsync_dir(folder.parent)

    def remove(self, relative: str) -> None:
        """Delete a stored file (and its now-empty series and study folders)."""
        path = self.root / relative
        path.unlink(missing_ok=True)
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def iter_files(self) -> Iterator[str]:
        """Every stored instance file, as a path relative to the root."""
        for dirpath, _dirs, files in os.walk(self.studies_dir):
            for name in files:
                if name.endswith(SUFFIX):
                    full = Path(dirpath) / name
                    yield full.relative_to(self.root).as_posix()
