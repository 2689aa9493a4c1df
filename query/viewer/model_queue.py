"""Requests that run the model, bounded so that they cannot starve the pages.

A forward pass on a long text costs seconds of every core and memory in proportion to its length, and any
web page could ask for one. So the model runs one request at a time, a few more may wait their turn, and
the rest are turned away at once (429 with Retry-After); a text longer than `MAX_TEXT_TOKENS` is refused
before it reaches the model (413). Both carry a message the page shows.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from circuitdb.models import LoadedModel

T = TypeVar("T")

MAX_TEXT_CHARS = 4000
"""Refused before tokenizing (a token is rarely shorter than a character)."""
MAX_TEXT_TOKENS = 256
"""Tokens a typed text may have: a few sentences, what a feature or a search needs."""


class Refused(Exception):
    """A request the model will not run: `status` 413 (too long) or 429 (too many waiting)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_text_length(text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise Refused(413, f"text too long: {len(text)} characters (at most {MAX_TEXT_CHARS})")


def check_token_count(model: LoadedModel, text: str) -> None:
    n_tokens = len(model.tokenizer(text)["input_ids"])
    if n_tokens > MAX_TEXT_TOKENS:
        raise Refused(413, f"text too long: {n_tokens} tokens (at most {MAX_TEXT_TOKENS})")


def _leaving_a_core(work: Callable[..., T], *args: object) -> T:
    """`work(*args)` with torch on all cores but one, which stays free for the pages' requests."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    return work(*args)


class ModelQueue:
    """One model request runs at a time; up to `waiting` more wait for it; the rest get 429 at once."""

    def __init__(self, waiting: int = 4) -> None:
        self._turn = asyncio.Semaphore(1)
        self._admitted = 0
        self._capacity = 1 + waiting

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` on a worker thread once it is this request's turn (the counter needs no lock: the
        event loop is one thread)."""
        if self._admitted >= self._capacity:
            raise Refused(429, f"the model is busy ({self._admitted} requests running or waiting); try again shortly")
        self._admitted += 1
        try:
            async with self._turn:
                return await run_in_threadpool(_leaving_a_core, work, *args)
        finally:
            self._admitted -= 1
