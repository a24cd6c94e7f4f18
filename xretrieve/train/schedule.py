"""The schedule every training loop here shares: its budget, threads, learning rate and loss.

A run ends at a step budget (`max_steps`, the recipes' default) and/or a wall-clock budget
(`max_seconds`, counted from the start of the run so that loading counts too, less a reserve
for saving); the learning-rate schedule (linear warmup, cosine decay to a floor) spans
whichever ends first, so a run always finishes its schedule. A step budget alone makes the
model independent of the machine's speed and load: same seed, same steps and same torch
thread count give the same weights, bit for bit. The thread count (`threads`, default
`default_threads()`) never follows the load, because it changes the order of float sums and
so the last bits of the weights. Batches are drawn without replacement and reshuffled every
epoch from a seeded generator. Configs are duck-typed: any frozen dataclass with the fields
`check_schedule` reads will do.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xretrieve.errors import InputError

__all__ = [
    "Step",
    "budgeted_steps",
    "check_schedule",
    "clip_loss",
    "default_threads",
    "lr_at",
    "steps_per_second",
    "torch_threads",
]

# Kept back from the budget for writing the model folder.
_SAVE_RESERVE_S = 2.0


def check_schedule(config: Any) -> None:
    """Validate the fields every training config shares: its end, batch, LR schedule, threads."""
    if config.max_seconds is None and config.max_steps is None:
        raise InputError("give max_seconds, max_steps or both: training needs an end")
    if config.max_seconds is not None and config.max_seconds <= 0:
        raise InputError(f"max_seconds must be positive, got {config.max_seconds}")
    if config.max_steps is not None and config.max_steps <= 0:
        raise InputError(f"max_steps must be positive, got {config.max_steps}")
    if config.batch_size < 2:
        raise InputError(f"batch_size must be at least 2 (contrastive), got {config.batch_size}")
    if config.lr <= 0 or not 0 <= config.min_lr_ratio <= 1 or not 0 <= config.warmup_fraction < 1:
        raise InputError("lr must be positive, min_lr_ratio in [0, 1], warmup in [0, 1)")
    if config.threads is not None and config.threads <= 0:
        raise InputError(f"threads must be positive, got {config.threads}")


def default_threads() -> int:
    """Torch threads for training: every core this process may run on.

    Measured on 2 cores (scripts/bench_train.py, quiet machine): 2 threads ran 1.89x the
    speed of 1 alone but 0.27x beside one busy process, because OpenMP's waiting threads
    spin and take the core from the thread that shares it. With waiting threads asleep
    (OMP_WAIT_POLICY=PASSIVE, which `xretrieve.configure_process()` sets, as the CLI does,
    unless the environment says otherwise) 2 threads kept 1.55x alone and matched 1 thread beside the busy process.
    The count depends on the CPU set only, never on the load.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run a block with `n` torch intra-op threads (None: `default_threads()`), then restore."""
    old = torch.get_num_threads()
    count = default_threads() if n is None else n
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(old)


def steps_per_second(steps: int, seconds: float) -> float:
    """Training speed, rounded for reports (0 when no time passed)."""
    return round(steps / seconds, 2) if seconds > 0 else 0.0


def lr_at(progress: float, *, config: Any) -> float:
    """Learning rate at a point of training (0 = start, 1 = end): linear warmup, cosine decay."""
    p = min(max(progress, 0.0), 1.0)
    if p < config.warmup_fraction:
        return config.lr * p / config.warmup_fraction
    t = (p - config.warmup_fraction) / (1.0 - config.warmup_fraction)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def clip_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of two batches of unit rows whose i-th rows are the positive pair."""
    logits = scale * a @ b.T
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@dataclass(frozen=True)
class Step:
    """One step of a budgeted schedule: its number, learning rate and batch of row indices."""

    number: int
    lr: float
    idx: torch.Tensor
    elapsed: float


def budgeted_steps(config: Any, *, t_start: float, n: int, gen: torch.Generator) -> Iterator[Step]:
    """Batches of rows (reshuffled every epoch) with the LR schedule, until the budget is spent.

    The budget is `config.max_seconds` (counted from `t_start`, so loading counts, minus a
    reserve for saving) and/or `config.max_steps`; the schedule spans whichever ends first.
    """
    t0 = time.perf_counter()
    deadline = None
    if config.max_seconds is not None:
        deadline = t_start + config.max_seconds - _SAVE_RESERVE_S
        if deadline <= t0:
            raise InputError(
                f"max_seconds={config.max_seconds} is used up by loading the data "
                f"({t0 - t_start:.1f} s): give more time"
            )
    batch = min(config.batch_size, n)
    order = torch.randperm(n, generator=gen)
    cursor = step = 0
    while True:
        now = time.perf_counter()
        progress = 0.0 if deadline is None else (now - t0) / (deadline - t0)
        if config.max_steps is not None:
            progress = max(progress, step / config.max_steps)
        if progress >= 1.0:
            return
        if cursor + batch > n:
            order = torch.randperm(n, generator=gen)
            cursor = 0
        yield Step(step, lr_at(progress, config=config), order[cursor : cursor + batch], now - t0)
        cursor += batch
        step += 1
