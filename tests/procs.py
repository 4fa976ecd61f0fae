"""Looking at a process tree through /proc (Linux), for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path


def child_pids(pid: int, recursive: bool = False) -> list[int]:
    """The processes whose parent is ``pid`` (and, recursively, theirs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found.append(child)
            if recursive:
                found += child_pids(child, recursive=True)
    return found


def peak_rss_mib(pid: int) -> float:
    """The highest resident memory of ``pid`` so far (VmHWM), in MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
