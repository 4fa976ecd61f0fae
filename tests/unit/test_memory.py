"""Workers keep the memory a study freed for the next study, and give it back when
idle (node.runner.memory). Each check runs in its own interpreter: the allocator
settings last for the life of a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, resource
import numpy as np
from node.runner.memory import give_back_memory, keep_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

kept = keep_freed_memory()
before = rss_mib()
study = np.ones(256 * 2**20, dtype=np.uint8)   # one study's array, touched page by page
del study
after_free = rss_mib()
start = faults()
study = np.ones(256 * 2**20, dtype=np.uint8)   # the next study's
refaults = faults() - start
del study
give_back_memory()
print(json.dumps({"kept": kept, "before": before, "after_free": after_free, "refaults": refaults,
                  "after_release": rss_mib()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is Linux's")
def test_memory_a_study_freed_is_reused_by_the_next_and_given_back_when_idle() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    probe = json.loads(out.stdout)
    assert probe["kept"] is True
    # kept in the process: the 256 MiB freed stays resident...
    assert probe["after_free"] - probe["before"] > 200
    # ...and the next study's array reuses it instead of mapping and zeroing 65,536
    # fresh pages (what glibc's default, an mmap per large array, costs every study)
    assert probe["refaults"] < 2000
    # idle: given back to the system
    assert probe["after_release"] - probe["before"] < 50


_SETTLE = """
import gc, json, weakref
from node.runner.memory import settle_long_lived_objects

class Node:
    pass

garbage = Node(); garbage.me = garbage          # a cycle nobody holds any more
dead = weakref.ref(garbage); del garbage
tables = {"kept": [Node() for _ in range(1000)]}  # what a worker keeps: loaded tables, models
before = len(gc.get_objects())
settle_long_lived_objects()
print(json.dumps({"garbage_freed": dead() is None, "frozen": gc.get_freeze_count(),
                  "still_walked": len(gc.get_objects()), "before": before}))
"""


def test_settling_frees_the_garbage_and_leaves_the_survivors_out_of_later_collections() -> None:
    out = subprocess.run([sys.executable, "-c", _SETTLE], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    probe = json.loads(out.stdout)
    assert probe["garbage_freed"]  # collected first, not frozen with the rest
    assert probe["frozen"] >= 1000  # the survivors, the kept tables among them
    assert probe["still_walked"] < probe["before"] // 10  # what later collections still walk
