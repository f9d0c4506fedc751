"""A deterministic, resumable index stream whose global order does not depend on world size.

The stream is defined once, globally: epoch ``e`` visits every scene index of
``0..num_scenes-1`` in an order that is a pure function of ``(seed, e)``. Training consumes
it in *global* batches of ``G = per_rank_batch × world_size`` positions; global step ``s``
of an epoch covers positions ``[s·G, min((s+1)·G, N))`` and rank ``r`` of ``W`` takes a
contiguous slice of that range (:func:`rank_slice`). The checkpoint state is only
``(epoch, position)`` — scenes consumed globally in the epoch — so a run resumed with a
different world size (hence a different ``G``) continues the same global sequence: no
index is repeated or skipped.

Ranks may get unequal local batches (``G`` not divisible by ``W``, or the short last
batch of an epoch, ``drop_last=False``); a local batch can even be empty. A trainer that
averages gradients must weight each rank by its local count (sum, then divide by the
global count), not average per-rank means.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch


def rank_slice(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``count`` items.

    The first ``count % world_size`` ranks get one item more than the rest, so the
    slices tile ``[0, count)`` exactly once, in rank order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_for_rank(global_batch_positions: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a 1-D global batch (positions or indices).

    Concatenating the results for ranks ``0..W-1`` gives back the input, so every element
    is covered exactly once, whether or not its length divides by ``world_size``.
    """
    if global_batch_positions.ndim != 1:
        raise ValueError(f"global batch must be 1-D, got shape {tuple(global_batch_positions.shape)}")
    start, stop = rank_slice(int(global_batch_positions.shape[0]), rank, world_size)
    return global_batch_positions[start:stop]


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch); hashing keeps nearby epochs unrelated."""
    digest = hashlib.sha256(f"ris_dist.sampler:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class GlobalIndexStream:
    """Epoch orders over ``0..num_scenes-1``, consumed in global batches split across ranks.

    Epoch ``e``'s order is ``torch.randperm(num_scenes)`` from a CPU ``torch.Generator``
    seeded with a hash of ``(seed, e)`` (or ``arange`` without shuffling): the same on
    every rank and every world size, so ranks agree without communicating.
    """

    def __init__(self, num_scenes: int, seed: int, shuffle: bool = True) -> None:
        if num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
        self.num_scenes = int(num_scenes)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._cached: tuple[int, torch.Tensor] | None = None  # (epoch, order): one randperm per epoch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Scene indices ``[num_scenes]`` int64 in the order epoch ``epoch`` visits them."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        if self.shuffle:
            gen = torch.Generator(device="cpu").manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(self.num_scenes, generator=gen, dtype=torch.int64)
        else:
            order = torch.arange(self.num_scenes, dtype=torch.int64)
        self._cached = (epoch, order)
        return order

    def iterate(
        self,
        start_epoch: int,
        start_position: int,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        end_epoch: int | None = None,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(epoch, position_after, local_indices)`` for each global step, from a state.

        ``(start_epoch, start_position)`` is a checkpointed state: ``position`` counts scenes
        consumed globally in that epoch (``0 <= position <= num_scenes``; ``num_scenes``
        means the epoch is finished and the stream goes on with the next one).

        Each step covers global positions ``[position, min(position + G, N))`` of the
        epoch order, ``G = global_batch_size``; ``local_indices`` (int64, CPU, possibly
        empty) is this rank's contiguous slice of it. ``(epoch, position_after)`` is the
        state to checkpoint once the step is done; ``position_after == num_scenes`` marks
        the last step of an epoch, which may be shorter than ``G``. The stream runs
        forever, or until epoch ``end_epoch`` (exclusive) when given.
        """
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if not 0 <= start_position <= self.num_scenes:
            raise ValueError(f"start_position must be in 0..{self.num_scenes}, got {start_position}")
        rank_slice(global_batch_size, rank, world_size)  # validates rank and world_size up front
        epoch, position = int(start_epoch), int(start_position)
        if position == self.num_scenes:
            epoch, position = epoch + 1, 0
        while end_epoch is None or epoch < end_epoch:
            order = self.epoch_order(epoch)
            while position < self.num_scenes:
                stop = min(position + global_batch_size, self.num_scenes)
                # clone: callers own their batch; a view would let them edit the cached order
                yield epoch, stop, shard_for_rank(order[position:stop], rank, world_size).clone()
                position = stop
            epoch, position = epoch + 1, 0
