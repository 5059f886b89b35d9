"""The embedded dispatcher: a daemon thread in every server process (PARTICIPANTS_DISPATCHER).

`create_app` starts one when the process will serve requests: under gunicorn, uWSGI or plain
Python (no click command is running) and under `flask run`, but not in `flask dispatch` (which
runs its own) nor in any other command (`flask routes`, `flask shell`, ...), nor in the watching
parent of `flask run --reload`. Several processes running one each is safe: deliveries are
claimed with leases, timers and batch items are idempotent.

Shutdown: at interpreter exit (gunicorn's worker exit after SIGTERM, Ctrl-C, the end of a
script) the stop event is set and the thread is given SHUTDOWN_WAIT_SECONDS to finish the
deliveries in flight and hand back its other claims. Under `flask run`, SIGTERM is made to stop
the server like Ctrl-C, so that exit happens.

Fork: a thread does not survive `fork()`. Before a process with a running embedded dispatcher
forks (gunicorn --preload loads the app in the master, then forks the workers), the dispatcher
is stopped after its deliveries in flight, and every child starts a fresh one; the parent does not
restart its own (the master of a pre-fork server serves nothing). Processes that fork helpers
from a server process should use the 'spawn' or 'forkserver' start method instead.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable

import click
from flask.helpers import get_debug_flag
from werkzeug.serving import is_running_from_reloader

from engine.jobs.dispatcher import Dispatcher

__all__ = ["MODES", "EmbeddedDispatcher", "serving"]

log = logging.getLogger("webapp")

MODES = ("embedded", "off")
SHUTDOWN_WAIT_SECONDS = 10.0

_lock = threading.Lock()
_wanted: set[EmbeddedDispatcher] = set()  # started and not stopped, in this process or a parent


def serving() -> bool:
    """Whether the process creating the app is one that serves requests."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True  # gunicorn, uWSGI, plain Python, tests
    if ctx.command.name != "run":
        return False  # `flask dispatch` (has its own), `flask routes`, any other command
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    return not reload or is_running_from_reloader()  # the reloader's parent serves nothing


class EmbeddedDispatcher:
    """One dispatcher thread for an app; `start` and `stop` it (both idempotent)."""

    def __init__(self, make: Callable[[], Dispatcher], poll_seconds: float):
        self._make = make
        self.poll_seconds = poll_seconds
        self.dispatcher: Dispatcher | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmbeddedDispatcher:
        with _lock:
            _wanted.add(self)
            self._start()
        return self

    def _start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self.dispatcher = self._make()
        self._thread = threading.Thread(target=self.dispatcher.run,
                                        args=(self._stop, self.poll_seconds),
                                        name=f"dispatcher-{self.dispatcher.owner}", daemon=True)
        self._thread.start()
        log.info("embedded dispatcher %s started: delivering callbacks, running timers and "
                 "batches", self.dispatcher.owner)

    def stop(self, timeout: float = SHUTDOWN_WAIT_SECONDS) -> bool:
        """Stop after the deliveries in flight; True once the thread has ended."""
        with _lock:
            _wanted.discard(self)
        return self._halt(timeout)

    def _halt(self, timeout: float) -> bool:
        thread, dispatcher = self._thread, self.dispatcher
        if thread is None:
            return True
        self._stop.set()
        dispatcher.wake()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("dispatcher %s still busy after %.0f s; its claims come back when their "
                        "leases expire", dispatcher.owner, timeout)
            return False
        self._thread = None
        log.info("embedded dispatcher %s stopped", dispatcher.owner)
        return True


# -- process lifetime ----------------------------------------------------------------------------

def _stop_all() -> None:
    with _lock:
        running = [e for e in _wanted if e.running]
    for embedded in running:
        embedded._halt(SHUTDOWN_WAIT_SECONDS)


def _before_fork() -> None:
    _lock.acquire()  # held across fork, so the child sees a consistent set
    for embedded in _wanted:
        if embedded.running and embedded._thread is not threading.current_thread():
            embedded._halt(SHUTDOWN_WAIT_SECONDS)


def _after_fork_in_parent() -> None:
    _lock.release()  # the parent's dispatchers stay stopped: they live on in the children


def _after_fork_in_child() -> None:
    _lock.release()
    for embedded in _wanted:
        embedded._thread = None  # the parent's thread (if it did not end in time) is not ours
        embedded._start()


atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def stop_on_sigterm() -> None:
    """Under `flask run`: let SIGTERM end the server like Ctrl-C (so the dispatcher stops
    cleanly at exit), unless somebody already handles it."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
