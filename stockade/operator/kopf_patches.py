"""A fix to kopf's start-up with many objects: one waiter per ToggleSet, not one per object.

While kopf fills the indexes on start-up, every object's worker drops its own
toggle from the operator's "indexed" ToggleSet and then waits on the set's
condition until all toggles are gone. Each drop wakes every worker already
waiting, which re-checks the set under the condition's lock: O(objects²)
wake-ups (30,000 pods: ~450 million). Measured here, 6,000 pods took 228 s of
CPU before the first handler ran.

`ToggleSet.wait_for` here keeps that contract (return once the set is in the
state asked for) but lets one shared task per (set, state) wait on the condition;
the workers await that task. Each change then wakes one waiter: O(objects).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

log = logging.getLogger("stockade.operator")
try:  # private: apply() checks kopf's shape and warns rather than fail
    from kopf._cogs.aiokits import aiotoggles
except ImportError:  # pragma: no cover - a kopf that moved it
    aiotoggles = None  # type: ignore[assignment]

_original_wait_for: Any = None


async def _shared_wait_for(self: Any, state: bool, /) -> None:
    wanted = bool(state)
    if self.is_on() == wanted:
        return
    waiters: dict[bool, tuple[asyncio.Future[Any], list[int]]]
    waiters = self.__dict__.setdefault("_stockade_waiters", {})
    entry = waiters.get(wanted)
    if entry is None or entry[0].done():
        entry = (asyncio.ensure_future(_original_wait_for(self, wanted)), [0])
        waiters[wanted] = entry
    shared, count = entry
    count[0] += 1
    try:
        await asyncio.shield(shared)  # a cancelled worker doesn't cancel the others' wait
    finally:
        count[0] -= 1
        if not count[0] and not shared.done():
            shared.cancel()  # nobody waits: kopf would wait 5 s for it at exit


def apply() -> None:
    """Idempotent; does nothing (with a warning) if kopf's ToggleSet changed shape."""
    global _original_wait_for
    toggles = getattr(aiotoggles, "ToggleSet", None)
    original = getattr(toggles, "wait_for", None)
    if original is _shared_wait_for:
        return
    if (
        toggles is None
        or not callable(getattr(toggles, "is_on", None))
        or not inspect.iscoroutinefunction(original)
        or len(inspect.signature(original).parameters) != 2  # (self, state)
    ):
        log.warning("kopf's ToggleSet changed: its start-up wait is not patched")
        return
    _original_wait_for = original
    toggles.wait_for = _shared_wait_for
