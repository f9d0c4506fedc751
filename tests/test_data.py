"""On-the-fly SceneDataset and the distributed GlobalIndexStream."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from ris_dist.data import GlobalIndexStream, SceneDataset, collate_scene_batches, rank_slice, shard_for_rank
from ris_dist.physics import SceneBatch, simulate

from scene_asserts import assert_same_scenes

SEED = 1234


# ------------------------------------------------------------------ index stream


def _one_epoch(stream: GlobalIndexStream, epoch: int, G: int, W: int) -> list[list[torch.Tensor]]:
    """Per global step, the local batches of ranks 0..W-1."""
    per_rank = [list(stream.iterate(epoch, 0, G, r, W, end_epoch=epoch + 1)) for r in range(W)]
    steps = [len(p) for p in per_rank]
    assert len(set(steps)) == 1, "every rank must take the same number of global steps"
    for r in range(W):
        assert [s[:2] for s in per_rank[r]] == [s[:2] for s in per_rank[0]]
    return [[per_rank[r][s][2] for r in range(W)] for s in range(steps[0])]


@pytest.mark.parametrize("N,G,W", [(100, 16, 2), (101, 16, 2), (7, 4, 3), (10, 3, 4), (5, 8, 3), (1, 1, 2)])
def test_each_index_exactly_once_per_epoch(N: int, G: int, W: int) -> None:
    stream = GlobalIndexStream(N, SEED)
    steps = _one_epoch(stream, 0, G, W)
    assert len(steps) == -(-N // G)  # drop_last=False: ceil
    flat = torch.cat([torch.cat(ranks) for ranks in steps])
    assert sorted(flat.tolist()) == list(range(N))
    # Rank slices in rank order rebuild the epoch order: the global sequence is world-size free.
    assert torch.equal(flat, stream.epoch_order(0))
    for ranks in steps:  # balanced: local sizes differ by at most one
        sizes = [len(t) for t in ranks]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("count,W", [(0, 3), (7, 3), (16, 2), (3, 4), (10, 4)])
def test_rank_slices_tile(count: int, W: int) -> None:
    slices = [rank_slice(count, r, W) for r in range(W)]
    assert slices[0][0] == 0 and slices[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    x = torch.arange(count)
    assert torch.equal(torch.cat([shard_for_rank(x, r, W) for r in range(W)]), x)


def _global_sequence(stream: GlobalIndexStream, epoch: int, pos: int, per_rank_batch: int, W: int,
                     steps: int) -> tuple[list[int], tuple[int, int]]:
    """Run ``steps`` global steps with W ranks; return the consumed global sequence and final state."""
    its = [stream.iterate(epoch, pos, per_rank_batch * W, r, W) for r in range(W)]
    seq: list[int] = []
    state = (epoch, pos)
    for _ in range(steps):
        outs = [next(it) for it in its]
        assert len({o[:2] for o in outs}) == 1
        state = outs[0][:2]
        seq += torch.cat([o[2] for o in outs]).tolist()
    return seq, state


def test_resume_with_other_world_size_continues_the_same_stream() -> None:
    N, B = 37, 4
    stream = GlobalIndexStream(N, SEED)
    reference, _ = _global_sequence(stream, 0, 0, B, 1, steps=30)  # 120 scenes: crosses 3 epochs

    first, state = _global_sequence(GlobalIndexStream(N, SEED), 0, 0, B, 2, steps=3)  # 24 scenes, mid-epoch
    assert state == (0, 24)
    rest, _ = _global_sequence(GlobalIndexStream(N, SEED), *state, B, 1, steps=30)
    assert first + rest[: len(reference) - len(first)] == reference

    # A checkpoint taken at the end of an epoch, (e, N), resumes at the next epoch.
    it = GlobalIndexStream(N, SEED).iterate(0, N, B, 0, 1)
    epoch, _, local = next(it)
    assert epoch == 1 and torch.equal(local, stream.epoch_order(1)[:B])


def test_epoch_orders_are_seeded_permutations() -> None:
    a, b = GlobalIndexStream(50, SEED), GlobalIndexStream(50, SEED)
    assert torch.equal(a.epoch_order(3), b.epoch_order(3))
    assert not torch.equal(a.epoch_order(0), a.epoch_order(1))
    assert not torch.equal(a.epoch_order(0), GlobalIndexStream(50, SEED + 1).epoch_order(0))
    assert sorted(a.epoch_order(2).tolist()) == list(range(50))
    assert torch.equal(GlobalIndexStream(50, SEED, shuffle=False).epoch_order(5), torch.arange(50))


def test_yielded_batches_do_not_alias_the_cached_order() -> None:
    stream = GlobalIndexStream(10, SEED)
    order = stream.epoch_order(0).clone()
    _, _, local = next(stream.iterate(0, 0, 4))
    local.fill_(-1)
    assert torch.equal(stream.epoch_order(0), order)


def test_invalid_arguments() -> None:
    stream = GlobalIndexStream(10, SEED)
    with pytest.raises(ValueError, match="rank"):
        next(stream.iterate(0, 0, 4, rank=2, world_size=2))
    with pytest.raises(ValueError, match="start_position"):
        next(stream.iterate(0, 11, 4))
    with pytest.raises(ValueError, match="global_batch_size"):
        next(stream.iterate(0, 0, 0))
    with pytest.raises(ValueError, match="num_scenes"):
        GlobalIndexStream(0, SEED)


# ------------------------------------------------------------------ SceneDataset


def test_scene_dataset_matches_simulate(system) -> None:
    ds = SceneDataset(system, SEED, "train", 40)
    assert len(ds) == 40
    idx = [3, 17, 39, 0]
    assert_same_scenes(ds.__getitems__(idx), simulate(system, idx, SEED, "train"))
    one = ds[17]
    assert len(one) == 1
    assert_same_scenes(one, simulate(system, [17], SEED, "train"))
    with pytest.raises(IndexError):
        ds[40]
    with pytest.raises(IndexError):
        ds.__getitems__([1, -1])


def test_collate(system) -> None:
    ds = SceneDataset(system, SEED, "train", 10)
    batch = ds.__getitems__([1, 2])
    assert collate_scene_batches(batch) is batch
    assert_same_scenes(collate_scene_batches([ds[1], ds[2]]), batch)
    with pytest.raises(ValueError):
        collate_scene_batches([])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_batched_fetch(system, num_workers: int) -> None:
    ds = SceneDataset(system, SEED, "val", 23)
    loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=num_workers, collate_fn=collate_scene_batches)
    batches = list(loader)
    assert [len(b) for b in batches] == [8, 8, 7]
    assert_same_scenes(SceneBatch.cat(batches), simulate(system, list(range(23)), SEED, "val"))


def test_dataloader_with_index_stream(system) -> None:
    """Rank-local index batches from the stream drive a DataLoader via batch_sampler."""
    stream = GlobalIndexStream(12, SEED)
    local = [t.tolist() for _, _, t in itertools.islice(stream.iterate(0, 0, 6, rank=1, world_size=2), 2)]
    ds = SceneDataset(system, SEED, "train", 12)
    got = list(DataLoader(ds, batch_sampler=local, collate_fn=collate_scene_batches))
    assert [b.indices.tolist() for b in got] == local
