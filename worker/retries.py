"""The one way a worker tries a step again: while its database or store is briefly away, or a result write fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseDown(Exception):
    """The database stayed unreachable through every retry: the run stops and leaves the job to the sweeper."""


class StoreDown(Exception):
    """The store stayed unreachable through every retry: the jobs held go back to the queue, uncounted."""


class ResultNotWritten(Exception):
    """The result could not be written through every retry (the store refused it, not an outage): the job goes back, counted."""


def retrying(step: Callable[[], T], delays: Sequence[float], transient: type[Exception], down: type[Exception], what: str) -> T:
    """Run `step`, trying again after each of `delays` while it raises `transient`; then raise `down` from the last error."""
    for delay in (*delays, None):
        try:
            return step()
        except transient as error:
            if delay is None:
                raise down(str(error)) from error
            log.warning("%s, retrying in %s s", what, delay, exc_info=True)
            time.sleep(delay)
    raise AssertionError("unreachable")
