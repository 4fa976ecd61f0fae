"""The first code every node process runs: die with the main process, make sure it
is still there, take the data directory's process lock, then import the process's
own code.

Linux's parent-death signal (``PR_SET_PDEATHSIG``) is asked for before anything of
the node is imported (pydicom, SQLAlchemy, torch take seconds), so that a main
process killed with SIGKILL at any moment leaves no process behind holding the
DICOM or API port or writing to the data directory: a child already past this
point is killed by the kernel, and one still starting finds its parent gone here
and exits. Only the standard library is imported in this module.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
#: In the data directory: held (shared) by every process of a running ``ainode serve``.
PROCESS_LOCK = "ainode.processes.lock"


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the supervisor's shutdown still applies
        pass


def name_process(role: str) -> None:
    """Name this process after its role (``listener-1``, ``inference-cpu-1``; Linux
    keeps 15 characters), so that ps, top and the benchmarks' memory figures tell the
    node's processes apart."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, role[:15].encode(), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reference(target: Callable[..., None]) -> str:
    """``module:function`` for a process body, imported by :func:`run` in the child."""
    return f"{target.__module__}:{target.__qualname__}"


def hold_process_lock(data_dir: str) -> int:
    """Take the data directory's process lock, shared; held until the process ends."""
    fd = os.open(Path(data_dir) / PROCESS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def run(lock_dir: str | None, target: str, settings: bytes, *args: Any) -> None:
    """Body of every node process (``multiprocessing`` target): ``target`` is called
    with the unpickled settings and ``args``."""
    die_with_parent()
    parent = multiprocessing.parent_process()
    if parent is None or os.getppid() != parent.pid:
        os._exit(0)  # the main process died while this one started: nothing to do
    if lock_dir is not None:
        hold_process_lock(lock_dir)
    if args and isinstance(args[0], str):
        name_process(args[0])
    module, name = target.split(":")
    body = getattr(importlib.import_module(module), name)
    body(pickle.loads(settings), *args)
