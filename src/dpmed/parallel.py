"""The project's process-pool map: ordered, bounded, and with workers that die with their parent.

A worker of a plain :class:`concurrent.futures.ProcessPoolExecutor` blocks on its task queue
forever when the parent is killed with SIGKILL (the parent gets no chance to shut the pool
down, and every worker holds its own copy of the queue's pipe, so no end-of-file ever arrives).
Each worker therefore asks the Linux kernel to send it SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid instead.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import ctypes
import ctypes.util
import itertools
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

__all__ = ["ordered_map", "die_with_parent"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_S = 1.0


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent:  # re-parented: the parent is gone
            os._exit(1)


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this process when the process ``parent`` dies.

    Parameters
    ----------
    parent: the pid of the process that created the pool (passed in, because the parent may
        already have died by the time the worker starts).
    """
    armed = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # The parent may have died between fork and prctl; the signal would never come.
    if os.getppid() != parent:
        os._exit(1)


def ordered_map(fn: Callable, items: Iterable, workers: int, window: int | None = None) -> Iterator[Any]:
    """``map(fn, items)`` over processes, in order, with at most ``window`` results pending.

    Parameters
    ----------
    fn: a picklable function of one item.
    items: any iterable; consumed lazily.
    workers: processes to use; ``<= 1`` runs in this process.
    window: most submitted-but-not-yielded items (default ``4 * workers``), so memory stays flat.

    Returns
    -------
    An iterator over ``fn(item)`` in the order of ``items``; a worker's exception is re-raised here.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or 4 * workers
    items = iter(items)
    pool = cf.ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))
    with pool:
        pending = collections.deque(pool.submit(fn, item) for item in itertools.islice(items, window))
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(items, 1):
                pending.append(pool.submit(fn, item))
            yield result
