"""Work that one rank does for the whole job: reading what every rank needs from a shared filesystem once,
and speaking for the job (``say``: one console line, not one per rank).

With 64 ranks, a file that each rank reads at start-up is read 64 times, all at once, from the same
server; read by global rank 0 and broadcast over the process group, it is read once. What is broadcast
is compressed (zstd): the listings of 400,000 shards pickle to 28 MB, mostly shard names that differ in a
few digits.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import zstandard

from lit_gpt.errors import UserError

T = TypeVar("T")


def computed_on_rank_0(fabric: Any, compute: Callable[[], T]) -> T:
    """``compute()`` run by global rank 0 alone, its result given to every rank. A ``UserError`` it raises
    is raised on every rank (the same one line); any other exception is a bug and stays on rank 0, whose
    exit ends the job."""
    if fabric.world_size == 1:
        return compute()
    payload = None
    if fabric.global_rank == 0:
        try:
            outcome = (compute(), None)
        except UserError as raised:
            outcome = (None, raised)
        payload = zstandard.ZstdCompressor(level=1).compress(pickle.dumps(outcome))
    result, error = pickle.loads(zstandard.ZstdDecompressor().decompress(fabric.broadcast(payload)))
    if error is not None:
        raise error
    return result


def say(fabric: Any, message: str) -> None:
    """One voice per job: the console line of global rank 0 (``fabric.print`` speaks once per node)."""
    if fabric.global_rank == 0:
        print(message, flush=True)
