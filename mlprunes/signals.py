"""Stopping on SIGTERM and SIGINT without leaving half-written files.

`stop_on_signals` makes either signal raise `Interrupted` in the main thread, so that a stage
unwinds: its runs end KILLED and its temporary folders are removed. Inside `deferred()` (writing
and uploading a checkpoint) the signal waits until the block is done: raised in the middle of
`torch.save`, it would leave a torn file, and torch would report its own error instead.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

from mlprunes.errors import Interrupted

STOPS = (signal.SIGTERM, signal.SIGINT)
_depth = 0                      # how many deferred() blocks are open
_pending: int | None = None     # a signal that arrived inside one
_received: int | None = None    # the stop signal this process got, if any


def received() -> int | None:
    """The stop signal received, if any: an error raised while unwinding from one (a library
    that turns the interruption into its own exception) is still a stop, not a failure."""
    return _received


def _handler(signum, frame) -> None:
    global _pending, _received
    _received = signum
    for s in STOPS:  # later signals are ignored while the stage unwinds
        signal.signal(s, signal.SIG_IGN)
    if _depth:
        _pending = signum
        return
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    global _pending, _received
    previous = {s: signal.getsignal(s) for s in STOPS}
    _pending = _received = None
    for s in STOPS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def deferred() -> Iterator[None]:
    """A block that a stop signal does not cut short; the signal takes effect after it."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)
