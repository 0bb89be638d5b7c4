"""Undo what a multi-step operation did when a later step fails (after Incus' revert).

    async with Reverter() as revert:
        make_tap(); revert.add(remove_tap)
        launch()              # raises -> remove_tap() runs, newest undo first
        revert.success()      # keep everything
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger(__name__)

Undo = Callable[[], None] | Callable[[], Awaitable[None]]


class Reverter:
    def __init__(self) -> None:
        self._undo: list[Undo] = []
        self._ok = False

    def add(self, undo: Undo) -> None:
        self._undo.append(undo)

    def success(self) -> None:
        self._ok = True

    async def revert(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                result = undo()
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one failed undo must not stop the others
                log.exception("undo step failed")

    async def __aenter__(self) -> Reverter:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if et is not None or not self._ok:
            await self.revert()
