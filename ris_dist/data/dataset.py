"""On-the-fly scenes as a torch Dataset: a batch of indices costs one ``simulate`` call.

Scenes are a pure function of ``(seed, split, global index)`` (physics/rng.py), so this
dataset needs no state beyond its arguments and gives the same scenes on any worker count.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..config import SystemConfig
from ..physics import SceneBatch, simulate


def collate_scene_batches(items: SceneBatch | Sequence[SceneBatch]) -> SceneBatch:
    """DataLoader ``collate_fn``: pass an already batched SceneBatch through, else concatenate.

    With ``__getitems__`` the DataLoader hands over one SceneBatch per batch; with
    per-item fetching (or ``batch_size=None``) it hands a list of 1-scene batches.
    """
    if isinstance(items, SceneBatch):
        return items
    items = list(items)
    if not items:
        raise ValueError("collate_scene_batches: empty batch")
    return items[0] if len(items) == 1 else SceneBatch.cat(items)


class SceneDataset(Dataset):
    """Scenes ``0..num_scenes-1`` of ``(seed, split)``, simulated on CPU when fetched.

    Trainers on an accelerator usually call :func:`ris_dist.physics.simulate` directly on
    their device with index batches from :class:`~ris_dist.data.sampler.GlobalIndexStream`;
    this class is for DataLoader-based code paths (CPU workers, evaluation, tests).
    """

    def __init__(self, system: SystemConfig, seed: int, split: str, num_scenes: int) -> None:
        if num_scenes < 0:
            raise ValueError(f"num_scenes must be >= 0, got {num_scenes}")
        self.system = system
        self.seed = int(seed)
        self.split = split
        self.num_scenes = int(num_scenes)

    def __len__(self) -> int:
        return self.num_scenes

    def _checked(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_scenes):
            bad = idx[(idx < 0) | (idx >= self.num_scenes)][0]
            raise IndexError(f"scene index {int(bad)} out of range 0..{self.num_scenes - 1}")
        return idx

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> SceneBatch:
        """All ``indices`` in one batched ``simulate`` call (the DataLoader's batched fetch)."""
        return simulate(self.system, self._checked(indices), self.seed, self.split)

    def __getitem__(self, index: int) -> SceneBatch:
        """A 1-scene SceneBatch."""
        return self.__getitems__([int(index)])
