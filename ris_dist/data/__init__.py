"""Scene data: on-the-fly datasets, frozen on-disk splits and the distributed index stream.

- :class:`SceneDataset` simulates scenes when fetched (batched via ``__getitems__``).
- :func:`write_split` / :func:`load_split` freeze a split into checksummed .npy shards and
  read it back memory-mapped as a :class:`FrozenSplit`.
- :class:`GlobalIndexStream` is the deterministic, resumable, world-size-independent order
  in which distributed training consumes scene indices.
"""

from .dataset import SceneDataset, collate_scene_batches
from .sampler import GlobalIndexStream, rank_slice, shard_for_rank
from .shards import DataError, FrozenSplit, load_split, write_split

__all__ = [
    "DataError",
    "FrozenSplit",
    "GlobalIndexStream",
    "SceneDataset",
    "collate_scene_batches",
    "load_split",
    "rank_slice",
    "shard_for_rank",
    "write_split",
]
