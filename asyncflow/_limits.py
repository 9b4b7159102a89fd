"""Per-channel rate limits: the free slots of each limited channel, and who waits for one.

A node on several limited channels holds a slot of each while it runs, taking all of
them at once or none (so two nodes never each hold a slot the other waits for). A node
that finds a channel full does not keep a worker waiting: it is parked on that channel
and handed back, in the order it came, when a slot frees. The limits belong to one run
and live on its event loop's thread, so plain counts do.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class Channel:
    """A limited channel: how many slots are free, and the nodes parked on it."""

    __slots__ = ("free", "parked")

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.parked: deque[Any] = deque()  # scheduler nodes, first come first served


class Limits:
    """The limited channels of one run."""

    def __init__(self, rate_limits: Mapping[str, int]) -> None:
        self._channels = {ch: Channel(n) for ch, n in sorted(rate_limits.items())}

    def for_channels(self, channels: Iterable[str]) -> tuple[Channel, ...]:
        """Return those of `channels` that are limited."""
        return tuple(self._channels[ch] for ch in sorted(set(channels)) if ch in self._channels)

    @staticmethod
    def take(channels: tuple[Channel, ...]) -> Channel | None:
        """Take a slot of every channel, or of none: then return a full one."""
        for channel in channels:
            if channel.free <= 0:
                return channel
        for channel in channels:
            channel.free -= 1
        return None

    def give_back(self, channels: tuple[Channel, ...]) -> list[Any]:
        """Free a slot of each channel; return the parked nodes that may now take them."""
        for channel in channels:
            channel.free += 1
        return self.unblocked(channels)

    def unblocked(self, channels: Iterable[Channel] | None = None) -> list[Any]:
        """Take off their queues as many parked nodes as `channels` (default: all) have free slots.

        Such a node may still find another of its channels full, and park again there.
        """
        out: list[Any] = []
        for channel in self._channels.values() if channels is None else channels:
            out.extend(channel.parked.popleft() for _ in range(min(channel.free, len(channel.parked))))
        return out
