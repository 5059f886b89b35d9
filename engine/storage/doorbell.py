"""A doorbell: writers in this process ring it after committing background work, so a waiting
dispatcher looks at once instead of at its next poll. Other processes' commits are not heard;
the dispatcher's poll finds those."""

from __future__ import annotations

import threading
import time

__all__ = ["Doorbell"]


class Doorbell:
    """A counter of rings and a condition to wait on it.

    A waiter reads `rings` before it looks for work and passes it to `wait`, which returns at
    once if the bell rang since, so a ring during the look is never missed. The lock is
    reentrant, so a signal handler may ring it (stopping a dispatcher on SIGTERM) even while
    the main thread is inside `wait`.
    """

    def __init__(self):
        self._condition = threading.Condition(threading.RLock())
        self.rings = 0

    def ring(self) -> None:
        with self._condition:
            self.rings += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the bell rings after `seen` rings, or `timeout` seconds; True if it rang."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self.rings == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(left)
            return True
