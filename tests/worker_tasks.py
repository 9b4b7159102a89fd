"""Tasks whose jobs `test_imports.py` runs through a worker: this module imports asyncflow alone.

A job's worker imports the module of its task, so whatever a test module imports besides
(subprocess, pathlib, pytest) would be among what the worker loads.
"""

from __future__ import annotations

from asyncflow import Task


class Square(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    def run_task(self) -> int:
        return self.n * self.n


class Squares(Task):
    def build_task(self, n: int) -> None:
        self.n = n

    def run_task(self) -> list[int]:
        return [i * i for i in range(self.n)]
