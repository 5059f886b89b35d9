"""A forked child's storages forget their parent's connections first, before any other fork
handler runs there (one that starts a thread which would use them): this module registers its
hook when engine.storage is first imported, ahead of whatever imports it."""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["after_fork_in_child"]

_HOOKS: list[Callable[[], None]] = []


def after_fork_in_child(hook: Callable[[], None]) -> None:
    """Run `hook()` in every child forked from now on, before later-registered fork handlers."""
    _HOOKS.append(hook)


def _run() -> None:
    for hook in _HOOKS:
        hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run)
