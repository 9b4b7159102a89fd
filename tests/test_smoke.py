from __future__ import annotations

from pathlib import Path

from asyncflow import Const, Req, Requires, Task


class Choose(Task):
    prev1: Requires[int]
    prev2: Requires[int] = Req()

    def build_task(self, n: int, k: int) -> None:
        if 0 < k < n:
            self.prev1 = Choose(n - 1, k - 1)
            self.prev2 = Choose(n - 1, k)
        else:
            self.prev1 = Const(0)
            self.prev2 = Const(1)

    async def run_task(self) -> int:
        return self.prev1 + self.prev2


async def test_choose(cache_dir: Path) -> None:
    assert await Choose(6, 3).run(cache_dir=cache_dir) == 20
