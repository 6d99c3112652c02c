"""Seeded random streams and draws of distinct examples, shared by the generated tasks."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator
from typing import TypeVar

T = TypeVar("T")


def random_stream(namespace: str, seed: int, purpose: str) -> random.Random:
    """An independent random stream for one purpose of one generated task (a split, ...).

    A string seed is hashed with SHA-512 by `random.seed` (not with `hash()`), so the stream is
    the same in every run and Python version.
    """
    return random.Random(f"ketchup-{namespace}/{purpose}/{seed}")


def distinct_draws(
    draw: Callable[[], T],
    source_of: Callable[[T], str],
    n: int,
    what: str,
    exclude: Collection[str] = frozenset(),
) -> Iterator[T]:
    """`n` draws with distinct sources, none in `exclude`, yielded lazily.

    Lazily, so that what the caller draws from the same stream for each item (its references)
    interleaves with the draws: the first k items are then the same whatever `n` is. Gives up
    after 100 n + 1000 draws (a task too small for `n`), naming `what`.
    """
    sources: set[str] = set()  # membership only
    for _ in range(100 * n + 1000):
        if len(sources) == n:
            return
        item = draw()
        source = source_of(item)
        if source not in sources and source not in exclude:
            sources.add(source)
            yield item
    if len(sources) < n:
        raise ValueError(f"cannot draw {n} distinct {what}")
