"""Peak extra memory of one call, for the benchmarks' and the tests' fresh child processes.

``ru_maxrss`` is the high-water mark of the whole process, so its growth
during a call hides the call's peak whenever an earlier moment of the process
(imports, compilation, making the data) was higher.  On Linux
:func:`peak_extra` therefore resets the mark just before the call (writing
"5" to ``/proc/self/clear_refs`` sets ``VmHWM`` to the current ``VmRSS``) and
reports ``VmHWM`` after the call minus ``VmRSS`` before it: the most resident
memory the call added at any moment.  Where that is not available (other
systems, or a kernel that refuses the write) it falls back to the growth of
``ru_maxrss``, a lower bound, and says so.
"""

from __future__ import annotations

import resource
import sys
from typing import Callable

#: How :func:`peak_extra` measured: the exact method, and the fallback (a lower bound).
EXACT = "VmHWM reset by clear_refs"
LOWER_BOUND = "ru_maxrss growth (a lower bound)"


def status_kb(field: str) -> int:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``); OSError when absent."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field + " not in /proc/self/status")


def maxrss_bytes() -> int:
    """The process's ``ru_maxrss`` high-water mark in bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB elsewhere


def peak_extra(fn: Callable[[], object]) -> tuple[int, str]:
    """Most resident memory ``fn()`` adds at any moment, in bytes, and the method used
    (:data:`EXACT` or :data:`LOWER_BOUND`)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := VmRSS
        before = status_kb("VmRSS")
        fn()
        return (status_kb("VmHWM") - before) * 1024, EXACT
    except OSError:
        before = maxrss_bytes()
        fn()
        return maxrss_bytes() - before, LOWER_BOUND
