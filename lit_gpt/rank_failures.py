"""One voice when a rank fails: the rank that failed says its one line, the others leave without a traceback.

A job of W processes fails in two ways:

- A rank finds a problem in its own input: a damaged shard, which only the ranks reading its blocks see.
  Raised on the spot, it would leave the other ranks in the step's collectives, to die there with the
  backend's traceback ("Connection closed by peer"), and two ranks that read the same shard would each
  print it. ``CheckedBatches`` keeps the error and feeds the rest of the step a batch of zeros; the
  step's loss all-reduce (no collective of its own) carries one flag per rank, so every rank learns who
  failed, the lowest such rank prints its error and all exit with status 2 together.
- A rank dies (a bug, ``kill -9``, a lost node) or hangs. The others learn it from their next collective,
  which fails ("Connection closed by peer", NCCL's abort) or times out (``lit_gpt.watchdog``).
  ``quiet_when_another_rank_fails`` turns the failure into at most one line, from global rank 0, and exit
  status ``lit_gpt.watchdog.TIMEOUT_STATUS``: the dead rank's own output, or the launcher's report, says why.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from lit_gpt.errors import AnotherRankFailed, UserError
from lit_gpt.run_dir import release_locks
from lit_gpt.watchdog import TIMEOUT_STATUS

T = TypeVar("T")
PEER_FAILURES = ("closed by peer", "reset by peer", "Broken pipe", "communicator was aborted", "remote process exit")


class CheckedBatches(Iterator[torch.Tensor]):
    """A rank's micro-batches, where a data error does not end the rank before the step's all-reduce."""

    def __init__(self, batches: Iterable[torch.Tensor], shape: tuple[int, int]) -> None:
        self.batches, self.shape = iter(batches), shape
        self.error: UserError | None = None

    def __next__(self) -> torch.Tensor:
        if self.error is None:
            try:
                return next(self.batches)
            except UserError as error:
                self.error = error
        return torch.zeros(self.shape, dtype=torch.long)  # the step's collectives need every rank

    def flags(self, rank: int, world_size: int) -> torch.Tensor:
        """One number per rank, 1 at this rank's place if its data failed: summed with the step's loss."""
        flags = torch.zeros(world_size)
        flags[rank] = float(self.error is not None)
        return flags

    def raise_if_failed(self, reduced: torch.Tensor, rank: int) -> None:
        """After the all-reduce of ``flags`` (any reduction that keeps a positive value positive): the
        lowest failed rank raises its error to print it, every other rank leaves without a word."""
        failed = torch.nonzero(reduced > 0).flatten().tolist()
        if not failed:
            return
        if rank == failed[0]:
            self.error.report_here = True
            raise self.error
        raise AnotherRankFailed(f"rank {failed[0]} failed")


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank went away."""
    return isinstance(error, RuntimeError) and any(text in str(error) for text in PEER_FAILURES)


def quiet_when_another_rank_fails(work: Callable[..., T]) -> Callable[..., T]:
    """``work(fabric, ...)``, where a collective that fails because another rank died ends this rank with
    one line from global rank 0 (none from the others) instead of the backend's traceback."""

    @functools.wraps(work)
    def wrapped(fabric: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return work(fabric, *args, **kwargs)
        except RuntimeError as error:
            if not is_peer_failure(error):
                raise
            if fabric.global_rank == 0:
                print(
                    "rank 0: stopping: another rank failed or was stopped (its error is above, or in the "
                    "launcher's report)",
                    file=sys.stderr,
                    flush=True,
                )
            release_locks()
            sys.stdout.flush()
            os._exit(TIMEOUT_STATUS)  # a clean exit would wait on the lost rank in the process group's teardown

    return wrapped
