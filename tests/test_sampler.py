"""Tests for sampler.py: sharding, reproducibility, resume and exact evaluation."""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sampler import DistributedTrainSampler, ExactEvalSampler, RASampler, sample_seed  # noqa: E402


def _epoch_items(cls, world, epoch=0, **kwargs):
    """List of (index, seed) per rank for one epoch."""
    per_rank = []
    for rank in range(world):
        sampler = cls(num_replicas=world, rank=rank, **kwargs)
        sampler.set_epoch(epoch)
        per_rank.append(list(sampler))
    return per_rank


def _by_position(per_rank):
    """Rebuild {global position: (index, seed)} from the strided split."""
    world = len(per_rank)
    return {rank + j * world: item for rank, items in enumerate(per_rank) for j, item in enumerate(items)}


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_train_epoch_is_partition_in_whole_batches(world):
    num_samples, batch_size = 53, 4
    per_rank = _epoch_items(DistributedTrainSampler, world, num_samples=num_samples,
                            batch_size=batch_size, seed=7)
    lengths = {len(items) for items in per_rank}
    assert len(lengths) == 1, "every rank must run the same number of steps"
    per_rank_len = lengths.pop()
    assert per_rank_len % batch_size == 0
    assert per_rank_len == (num_samples // (world * batch_size)) * batch_size
    indices = [index for items in per_rank for index, _ in items]
    assert len(indices) == len(set(indices)), "ranks overlap or an index repeats"
    assert set(indices) <= set(range(num_samples))
    # Only the tail that does not fill a batch on every rank is dropped.
    assert num_samples - len(indices) < world * batch_size
    assert all(isinstance(index, int) and isinstance(seed, int) for items in per_rank for index, seed in items)
    assert all(0 <= seed < 2 ** 63 for items in per_rank for _, seed in items)


def test_train_no_drop_last_pads_like_torch():
    num_samples, world = 10, 4
    per_rank = _epoch_items(DistributedTrainSampler, world, num_samples=num_samples, drop_last=False,
                            batch_size=2)
    assert [len(items) for items in per_rank] == [3, 3, 3, 3]
    indices = [index for items in per_rank for index, _ in items]
    assert set(indices) == set(range(num_samples))
    seeds = [seed for items in per_rank for _, seed in items]
    assert len(set(seeds)) == len(seeds), "padded duplicates must get their own seeds"


def test_epochs_differ_and_are_reproducible():
    kwargs = dict(num_samples=40, batch_size=4, seed=3)
    epoch0 = _epoch_items(DistributedTrainSampler, 2, epoch=0, **kwargs)
    epoch1 = _epoch_items(DistributedTrainSampler, 2, epoch=1, **kwargs)
    assert epoch0 == _epoch_items(DistributedTrainSampler, 2, epoch=0, **kwargs)
    assert [i for i, _ in epoch0[0]] != [i for i, _ in epoch1[0]]
    assert {s for _, s in epoch0[0]}.isdisjoint({s for _, s in epoch1[0]})
    other_seed = _epoch_items(DistributedTrainSampler, 2, epoch=0, num_samples=40, batch_size=4, seed=4)
    assert [i for i, _ in epoch0[0]] != [i for i, _ in other_seed[0]]


def test_order_matches_torch_generator_convention():
    sampler = DistributedTrainSampler(20, seed=5, batch_size=1)
    sampler.set_epoch(2)
    generator = torch.Generator()
    generator.manual_seed(5 + 2)
    expected = torch.randperm(20, generator=generator).tolist()
    assert [index for index, _ in sampler] == expected


def test_seed_independent_of_world_size():
    kwargs = dict(num_samples=48, batch_size=4, seed=11)
    single = _by_position(_epoch_items(DistributedTrainSampler, 1, epoch=3, **kwargs))
    double = _by_position(_epoch_items(DistributedTrainSampler, 2, epoch=3, **kwargs))
    assert single.keys() == double.keys()
    for position, (index, seed) in double.items():
        assert single[position] == (index, seed)
        assert seed == sample_seed(11, 3, position)


def test_no_shuffle_keeps_order_but_seeds_vary():
    sampler = DistributedTrainSampler(8, shuffle=False, batch_size=2)
    items = list(sampler)
    assert [index for index, _ in items] == list(range(8))
    assert len({seed for _, seed in items}) == 8


@pytest.mark.parametrize("cls,extra", [(DistributedTrainSampler, {}), (RASampler, {"repetitions": 3})])
@pytest.mark.parametrize("batches_done", [0, 1, 3, 5])
def test_set_start_batch_yields_exact_tail(cls, extra, batches_done):
    common = dict(num_samples=45, num_replicas=2, rank=1, seed=9, batch_size=4, **extra)
    full = cls(**common)
    full.set_epoch(4)
    full_items = list(full)
    resumed = cls(**common)
    resumed.set_epoch(4)
    resumed.set_start_batch(batches_done)
    tail = list(resumed)
    assert tail == full_items[batches_done * 4:]
    assert len(resumed) == len(tail)
    resumed.set_epoch(5)
    assert len(resumed) == len(full_items), "set_epoch must reset the start offset"


def test_set_start_batch_rejects_too_many_batches():
    sampler = DistributedTrainSampler(16, batch_size=4)
    sampler.set_start_batch(4)  # exactly the end of the epoch is a valid resume point
    assert len(sampler) == 0 and list(sampler) == []
    with pytest.raises(ValueError, match="set_start_batch"):
        sampler.set_start_batch(5)


def test_state_dict_round_trip():
    sampler = DistributedTrainSampler(64, num_replicas=2, rank=0, seed=21, batch_size=4)
    sampler.set_epoch(6)
    sampler.set_start_batch(3)
    state = sampler.state_dict()
    assert json.loads(json.dumps(state)) == state, "state must be plain types"
    assert state == {"epoch": 6, "start_offset": 12, "seed": 21, "num_replicas": 2}
    restored = DistributedTrainSampler(64, num_replicas=2, rank=0, seed=0, batch_size=4)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    assert list(restored) == list(sampler)
    assert len(restored) == len(sampler) == 32 - 12


def test_state_dict_translates_across_world_size():
    """Resuming on 4 processes from a 2-process checkpoint continues the same global order."""
    def make(world, rank):
        sampler = DistributedTrainSampler(64, num_replicas=world, rank=rank, batch_size=4, seed=1)
        sampler.set_epoch(1)
        return sampler

    old = [make(2, rank) for rank in range(2)]
    for sampler in old:
        sampler.set_start_batch(2)  # 8 items per rank: global positions 0..15 consumed
    resumed = []
    for rank in range(4):
        sampler = make(4, rank)
        sampler.load_state_dict(old[rank % 2].state_dict())
        assert sampler.start_offset == 4
        resumed.append(list(sampler))
    full = make(1, 0).global_order()
    consumed = [(full[p], sample_seed(1, 1, p)) for p in range(16)]
    resumed_flat = [item for items in resumed for item in items]
    assert sorted(consumed + resumed_flat) == sorted((full[p], sample_seed(1, 1, p)) for p in range(64))
    with pytest.raises(ValueError, match="processes"):
        DistributedTrainSampler(63, num_replicas=3, batch_size=1).load_state_dict(old[0].state_dict())


def test_load_state_dict_missing_key():
    with pytest.raises(ValueError, match="start_offset"):
        DistributedTrainSampler(8).load_state_dict({"epoch": 0, "seed": 0, "num_replicas": 1})


def test_ra_global_order_repeats_each_index():
    sampler = RASampler(30, seed=2, batch_size=2, repetitions=3)
    sampler.set_epoch(1)
    order = sampler.global_order()
    assert len(order) == 90
    counts = torch.bincount(torch.tensor(order), minlength=30)
    assert counts.tolist() == [3] * 30
    # Copies are adjacent so the strided split sends them to different ranks.
    assert all(order[i] == order[i + 1] == order[i + 2] for i in range(0, 90, 3))
    other = RASampler(30, seed=2, batch_size=2, repetitions=3)
    other.set_epoch(2)
    assert other.global_order() != order


@pytest.mark.parametrize("world", [1, 3])
def test_ra_epoch_split_and_distinct_seeds(world):
    num_samples, batch_size, reps = 60, 4, 3
    per_rank = _epoch_items(RASampler, world, epoch=2, num_samples=num_samples, batch_size=batch_size,
                            repetitions=reps, seed=8)
    expected_len = (num_samples // (world * batch_size)) * batch_size
    assert [len(items) for items in per_rank] == [expected_len] * world
    items = [item for rank_items in per_rank for item in rank_items]
    seeds = [seed for _, seed in items]
    assert len(set(seeds)) == len(seeds)
    reference = RASampler(num_samples, batch_size=batch_size, repetitions=reps, seed=8)
    reference.set_epoch(2)
    order = reference.global_order()
    for position, (index, seed) in _by_position(per_rank).items():
        assert order[position] == index and seed == sample_seed(8, 2, position)
    if world == reps:
        # Each rank sees a different copy of the same images, in the same step.
        assert [i for i, _ in per_rank[0]] == [i for i, _ in per_rank[1]] == [i for i, _ in per_rank[2]]


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_exact_eval_sampler_covers_each_index_once(world):
    shards = [list(ExactEvalSampler(7, num_replicas=world, rank=rank)) for rank in range(world)]
    flat = [index for shard in shards for index in shard]
    assert sorted(flat) == list(range(7))
    assert len(flat) == 7
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [len(ExactEvalSampler(7, world, rank)) for rank in range(world)]
    for shard in shards:
        assert shard == list(range(shard[0], shard[0] + len(shard))) if shard else True
    assert all(isinstance(index, int) for index in flat)
    if world == 8:
        assert sizes.count(0) == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_samples=7, num_replicas=2, batch_size=4), "no whole batch per rank with batch_size=4"),
    (dict(num_samples=0), "num_samples=0"),
])
def test_too_few_samples_for_a_batch_per_rank_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributedTrainSampler(**kwargs)


def test_dataloader_with_workers_gets_same_stream():
    """A DataLoader must pass (index, seed) through unchanged regardless of workers."""

    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return 24

        def __getitem__(self, item):
            index, seed = item
            return index, seed % 1000003

    def run(workers):
        sampler = DistributedTrainSampler(24, batch_size=4, seed=3)
        sampler.set_epoch(1)
        loader = torch.utils.data.DataLoader(Echo(), batch_size=4, sampler=sampler, num_workers=workers)
        return [(b[0].tolist(), b[1].tolist()) for b in loader]

    assert run(0) == run(2)
