"""A unit of work that lost a race is run again whole, so the retry decides against the winner
(a second create of one uniqueCode becomes its 'already exists' failure, not a 500)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from engine.storage.interface import StorageConflict

__all__ = ["ATTEMPTS", "retrying"]

ATTEMPTS = 5  # a unit of work that loses this many races in a row answers 503
T = TypeVar("T")


def retrying(unit: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """`unit()`, run again while it raises StorageConflict, `attempts` times at most."""
    for attempt in range(1, attempts + 1):
        try:
            return unit()
        except StorageConflict:
            if attempt == attempts:
                raise
            # two losers of a deadlock retrying in step would meet again
            time.sleep(random.uniform(0, 0.002 * attempt))
    raise AssertionError("unreachable")
