"""Signals and forked worker processes (resize's pool, the training's data loader).

A forked worker inherits its parent's signal handlers, and acts on a signal as
its parent would until it has set its own: a ^C or SIGTERM sent to the whole
process group in that moment prints the worker's traceback, or ends it. So
workers are forked with those signals blocked (a process takes the mask of the
thread that forks it, a thread that of the thread that starts it), and each
unblocks them once its own actions are set.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterable, Iterator

_MASKS = hasattr(signal, "pthread_sigmask")  # not on Windows


@contextlib.contextmanager
def blocked(signals: Iterable[int]) -> Iterator[None]:
    """``signals`` blocked in this thread for the block; one that arrives meanwhile is delivered at its end."""
    if not _MASKS:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock(signals: Iterable[int]) -> None:
    """In a worker forked inside :func:`blocked`, once its actions for ``signals`` are set."""
    if _MASKS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
