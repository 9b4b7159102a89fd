"""Bodies on SSH hosts through asyncssh (being written: only the URL form is parsed yet)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import OptionError

if TYPE_CHECKING:
    from .base import Placement


def parse_host_url(url: str) -> Placement:
    """Parse ``ssh://user@host:port``."""
    raise OptionError(f"hosts={{...: {url!r}}}: SSH hosts are not available yet")
