"""The operator's pacing: changes wake the reconciler, which waits until they pause;
failures are retried after a back-off."""

from __future__ import annotations

import asyncio


class Debouncer:
    """Wake on a change; then wait until changes pause for `quiet` seconds, at most
    `max_delay` after the first, so a rollout of 500 pods on a node is one pass."""

    def __init__(self, quiet: float, max_delay: float) -> None:
        self.quiet = quiet
        self.max_delay = max_delay
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def later(self, seconds: float) -> None:
        asyncio.get_running_loop().call_later(seconds, self._wake.set)

    async def settle(self, timeout: float) -> bool:
        """Wait for a change (False: `timeout` passed without one), then for the pause."""
        loop = asyncio.get_running_loop()
        woken = True
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            woken = False
        first = loop.time()
        while True:
            self._wake.clear()
            left = first + self.max_delay - loop.time()
            if left <= 0:
                return woken
            try:
                await asyncio.wait_for(self._wake.wait(), min(self.quiet, left))
            except TimeoutError:
                return woken
