"""Per-channel rate limits: one `CapacityLimiter` per limited channel, taken in one order.

A node on several limited channels holds all of them while it runs. Every node takes
its limiters sorted by channel name, so two nodes can never each hold one limiter the
other waits for.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterable, Mapping


class Limits:
    """The limiters of one run."""

    def __init__(self, rate_limits: Mapping[str, int]) -> None:
        self._limiters = {ch: anyio.CapacityLimiter(n) for ch, n in sorted(rate_limits.items())}

    def for_channels(self, channels: Iterable[str]) -> tuple[anyio.CapacityLimiter, ...]:
        """Return the limiters of `channels` that are limited, in the global order."""
        return tuple(self._limiters[ch] for ch in sorted(set(channels)) if ch in self._limiters)


@asynccontextmanager
async def hold(limiters: tuple[anyio.CapacityLimiter, ...]) -> AsyncGenerator[None, None]:
    """Hold every limiter of `limiters` (already in global order) for the block."""
    taken: list[anyio.CapacityLimiter] = []
    try:
        for limiter in limiters:
            await limiter.acquire()
            taken.append(limiter)
        yield
    finally:
        for limiter in reversed(taken):
            limiter.release()
