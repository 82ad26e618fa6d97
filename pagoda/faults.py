"""Fault injection for tests: kill the process at a named point, deterministically.

PAGODA_KILL_AT='<point>:<n>' sends SIGKILL to the process the n-th time it reaches `kill_point(<point>)` (n
counts from 1), so a test can stop a job right after, say, its second chunk, with no timing involved. Unset (the
normal case), a kill point costs one dictionary lookup.
"""

import os
import signal

ENV = "PAGODA_KILL_AT"
_counts = {}


def kill_point(name):
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, n = spec.rpartition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
