"""How the worker processes use memory: keep what a study freed for the next one, give
it back to the system when idle.

A 300-slice CT passes through about a dozen arrays of 80-310 MB (the volume, masks,
the label map, the SEG's frames). glibc serves each allocation that large with a
fresh ``mmap`` and returns it on ``free``, so every study pays again for the kernel
to map and zero each page: measured on the 2-core benchmark machine, 1.0-1.4 s of
system time in ct-chest's ``predict`` and 1.3 s in loading the series, a third of
the infer step. With freed memory kept in the process's heap
(:func:`keep_freed_memory`) the next study reuses it: ``predict`` 2.6-2.9 s ->
1.7-1.8 s and the load 0.5-1.6 s -> 0.35 s on the same volume.

The price is resident memory between studies: a worker keeps its high-water mark
(about 1.2 GiB after a 300-slice CT) while studies keep coming.
:func:`give_back_memory` returns it once the worker has been idle for
``worker_memory_release_s`` (:class:`node.jobs.worker.Worker` calls it).

numpy asks for transparent huge pages for its arrays of 4 MiB and more; on the
benchmark machine each such page fault (zeroing 2 MiB) made the first study after a
start or a release 0.9 s slower to load (1.57 s against 0.69 s). Workers turn it off.

Python's cycle collector walks every tracked object in its oldest generation now and
then: in a job worker that has loaded highdicom's tables (about 680,000 objects) that
took 0.26-0.43 s of each SEG + SR encoding. :func:`settle_long_lived_objects`, run when
a worker turns idle, moves what has survived out of its reach (``gc.freeze``): 0.02-0.07 s.

Only glibc has the allocator's knobs; elsewhere (musl, macOS) those functions do nothing.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """From now on, serve large allocations from the heap and keep what is freed
    there for reuse (glibc: no ``mmap`` per allocation, no trimming on ``free``, one
    arena so that every thread reuses the same memory), and stop numpy asking for
    huge pages. Returns whether the allocator could be told (glibc only)."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    hugepages = getattr(multiarray, "_set_madvise_hugepage", None)  # numpy's own switch
    if hugepages is not None:
        hugepages(False)
    libc = _glibc()
    if libc is None:
        return False
    # Order matters little: each mallopt applies to allocations made after it. A
    # request the heap cannot grow for still falls back to mmap inside glibc.
    # (a trim threshold of -1 is SIZE_MAX to glibc: free never trims the heap)
    ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, -1), (_M_MMAP_MAX, 0)))
    if not ok:
        log.warning("the allocator refused to keep freed memory; each study maps its memory anew")
    return ok


def give_back_memory() -> None:
    """Return the heap's free memory to the system (``malloc_trim``): called when a
    worker has been idle, so that a quiet node holds only what it uses."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def settle_long_lived_objects() -> None:
    """Collect the garbage, then leave what survived (modules, tables, caches, loaded
    models) out of future cycle collections. Run when a worker turns idle: what is
    alive then is what lives long."""
    gc.collect()
    gc.freeze()
