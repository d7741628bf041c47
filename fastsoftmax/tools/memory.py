"""Peak extra memory of one call: the one measurement of the benchmarks' memory numbers.

Meant to run in a fresh process (a child started for one implementation):
``ru_maxrss`` is the high-water mark of the whole process, so its growth
during a call hides the call's peak whenever an earlier moment of the process
(imports, compilation, making the data) was higher.  On Linux
:func:`peak_extra` therefore resets the mark just before the call (writing
"5" to ``/proc/self/clear_refs`` sets ``VmHWM`` to the current ``VmRSS``) and
reports ``VmHWM`` after the call minus ``VmRSS`` before it: the most resident
memory the call added at any moment, outputs that stay alive included.  Where
that is not available (other systems, or a kernel that refuses the write) it
falls back to the growth of ``ru_maxrss``, a lower bound, and says so.
bench/test_resources.py checks it against a known allocation.
"""

from __future__ import annotations

import resource
import sys
from typing import Callable

#: the method names :func:`peak_extra` returns
RESET = "VmHWM reset by clear_refs"
LOWER_BOUND = "ru_maxrss growth (a lower bound)"


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``...); OSError elsewhere."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def maxrss_bytes() -> int:
    """The process's ``ru_maxrss`` in bytes (it is in bytes on macOS, KiB elsewhere)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def can_reset() -> bool:
    """Whether this system lets a process reset its peak resident size (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        status_kb("VmHWM")
    except OSError:
        return False
    return True


def peak_extra(fn: Callable[[], object]) -> tuple[int, str]:
    """Call ``fn()``; return the most resident memory it added at any moment, in
    bytes, and the method used (:data:`RESET` or :data:`LOWER_BOUND`).

    Keep ``fn``'s outputs alive (append them to a list) to count them."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                       # VmHWM := VmRSS
        before = status_kb("VmRSS")
    except OSError:
        before = maxrss_bytes()
        fn()
        return maxrss_bytes() - before, LOWER_BOUND
    fn()
    return (status_kb("VmHWM") - before) * 1024, RESET
