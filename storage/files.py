"""The file store: received instances as DICOM Part 10 files, written durably.

A file reaches its final path only by an atomic rename of a fully written and
fsynced temporary file, followed by an fsync of the directory, so after any crash
a path holds either the complete old file, the complete new one, or nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PREAMBLE = b"\x00" * 128 + b"DICM"
SUFFIX = ".dcm"
# Recorded in the File Meta Information of every file the node writes.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1234.1"
IMPLEMENTATION_VERSION_NAME = "AINODE_010"


def safe_name(uid: str) -> str:
    """A file-system-safe name for ``uid``: the UID itself when it is a well-formed
    UID, otherwise a hash, so that no value from the wire can leave the store."""
    if len(uid) <= 64 and _SAFE_UID.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002 (2-byte length VRs)."""
    return struct.pack("<HH2sH", 0x0002, group_elem, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME,
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1).

    Encoded directly because it runs for every received image and pydicom's general
    writer costs more than the rest of the header work; a unit test checks the
    result byte for byte against pydicom's ``write_file_meta_info``.
    """
    body = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        _element(0x0002, b"UI", _ui(sop_class_uid)),
        _element(0x0003, b"UI", _ui(sop_instance_uid)),
        _element(0x0010, b"UI", _ui(transfer_syntax_uid)),
        _element(0x0012, b"UI", _ui(implementation_class_uid)),
        _element(0x0013, b"SH", _text(implementation_version_name)),
        _element(0x0016, b"AE", _text(source_ae_title)),
    ))
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return PREAMBLE + group_length + body


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Instances under ``<root>/studies/<study>/<series>/<sop>.dcm``; what the node
    computes from a study under ``<root>/results/<study>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.studies_dir = root / "studies"
        self.tmp_dir = root / "tmp"
        self._root, self._tmp = str(root), str(self.tmp_dir)

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

    def result_path(self, study_uid: str, name: str) -> str:
        """Where a result file of a study lives, relative to the store root."""
        return "/".join(("results", safe_name(study_uid), name))

    def remove_results(self, study_uid: str) -> None:
        """Delete every result file of a study."""
        shutil.rmtree(self.root / "results" / safe_name(study_uid), ignore_errors=True)

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def write(self, relative: str, parts: list[bytes | memoryview]) -> int:
        """Durably write ``parts`` (concatenated) at ``relative``; return the size.

        Raises ``OSError`` when the disk fails; then no file is left behind, neither
        the temporary one nor a partial one at the final path. (Paths are plain
        strings here: every received image comes through, and pathlib's conversions
        cost more than the system calls' own Python side.)
        """
        final = os.path.join(self._root, relative)
        tmp = os.path.join(self._tmp, uuid.uuid4().hex + ".part")
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
            folder = os.path.dirname(final)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # first instance of its series: make the folders
                self._ensure_dir(Path(folder))
                os.replace(tmp, final)
            _fsync_dir(folder)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
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
