"""Part 10 files (PS3.10 7.1) as they come over HTTP: where the dataset starts."""

from __future__ import annotations


def dataset_offset(data: bytes | bytearray | memoryview) -> int:
    """Where the dataset starts after the preamble and the file meta group (PS3.10 7.1);
    ``ValueError`` for a part that is not a DICOM file."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise ValueError("not a DICOM file (no DICM prefix)")
    view = memoryview(data)
    offset = 132
    while offset + 8 <= len(data):
        group = int.from_bytes(view[offset:offset + 2], "little")
        if group != 0x0002:
            return offset
        vr = bytes(view[offset + 4:offset + 6])
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(view[offset + 8:offset + 12], "little")
            offset += 12 + length
        else:
            length = int.from_bytes(view[offset + 6:offset + 8], "little")
            offset += 8 + length
    raise ValueError("file meta information without a dataset")
