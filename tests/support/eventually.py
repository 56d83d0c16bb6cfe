"""The one polling helper of the suite, for state that no event announces."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    within: float = ...,
    what: str = ...,
    every: float = ...,
    detail: Callable[[], str] = ...,
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T],
    *,
    within: float = ...,
    what: str = ...,
    every: float = ...,
    detail: Callable[[], str] = ...,
) -> T: ...
async def eventually(
    check: Callable[[], Any],
    *,
    within: float = 5.0,
    what: str = "the condition",
    every: float = 0.01,
    detail: Callable[[], str] = lambda: "",
) -> Any:
    """Call ``check`` (a plain or async function) every ``every`` seconds until it returns
    a truthy value, and return that value; AssertionError naming ``what``, the last value
    and ``detail()`` after ``within`` seconds. Bounded: a test that waits on it cannot hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(
                f"{what}: not reached within {within:g} s (last: {value!r})\n{detail()}"
            )
        await asyncio.sleep(every)
