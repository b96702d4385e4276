"""The process's place in a torchrun job: rank, world size, device, and the few collectives training and
evaluation use (NCCL on GPU, gloo on CPU; a single process needs no process group)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist


class Dist:
    """Rank/world of this process; initialises torch.distributed under torchrun."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (which logs, writes checkpoints and reports)."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world): this process scores items rank, rank + world, ... of an evaluation."""
        return self.rank, self.world

    def barrier(self) -> None:
        """Wait for all ranks."""
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        return gather(value, self.world)

    def close(self) -> None:
        """Tear the process group down."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def gather(value: Any, world: int) -> list:
    """All ranks' ``value`` in rank order (``[value]`` for a single process)."""
    if world == 1:
        return [value]
    out: list = [None] * world
    dist.all_gather_object(out, value)
    return out


def torchrun_main(prog: str, doc: Optional[str], add_arguments: Callable[[argparse.ArgumentParser], None],
                  run: Callable[[argparse.Namespace], int], argv: Optional[list[str]],
                  errors: tuple[type[Exception], ...]) -> int:
    """``python -m <prog>`` (what torchrun launches): parse, run, and turn ``errors`` into one line and exit code 2."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
