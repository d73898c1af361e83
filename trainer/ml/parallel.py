"""Data parallelism for one job across several processes: one per GPU of a multi-GPU
worker (NCCL), or several CPU processes (gloo, which is how the tests run it).

Every process builds the same step from the same seeded permutation and packs it into the
same micro-batches; process r runs micro-batches r, r + world, …; gradients and metric
sums are then added across processes, so a step equals the single-process step (up to
the order of float additions). The LoRA weights start identical (same seed) and stay so
(same summed gradients, same optimizer), so process 0 alone talks to the worker, reads
stop requests and writes checkpoints. Processes meet through torch.distributed's TCP
store, with torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

# A peer that died leaves the others blocked in a collective: fail rather than hang forever.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


class Group:
    """This process's place among the job's processes (world 1 when not distributed)."""

    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, n: int) -> range:
        """Indices of the micro-batches (out of n) this process runs."""
        return range(self.rank, n, self.world)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        for p in params:
            if p.grad is None:  # this process ran no micro-batch of the step
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def sum_stats(self, sums: dict[str, float], keys: tuple[str, ...], device: torch.device) -> dict[str, float]:
        if not self.active:
            return sums
        values = torch.tensor([float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist(), strict=True))

    def agree(self, request: str | None) -> str | None:
        """Process 0's stop request, seen by every process at the same step."""
        if not self.active:
            return request
        box = [request]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@contextmanager
def joined(rank: int, world: int, port: int, cuda: bool) -> Iterator[None]:
    """Join the job's process group as `rank` (process 0 listens on `port`)."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()
