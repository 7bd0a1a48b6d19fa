"""Samplers that make training exactly resumable and evaluation exact.

Training samplers yield ``(index, seed)`` pairs, the seed derived only from (base seed, epoch, position in the
epoch's global order): a dataset that seeds its per-sample augmentation with it produces the same pixels whatever
the number of workers or ranks, and whether or not the run was resumed mid-epoch. The global order does not depend
on the world size; rank ``r`` of ``R`` takes positions ``r, r+R, r+2R, ...`` of it (torch's DistributedSampler
split), so position ``p`` always means the same index and the same seed.
"""

import hashlib
import math

import torch

_SEED_BITS = 63
_STATE_KEYS = ("epoch", "start_offset", "seed", "num_replicas")


def sample_seed(base_seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the draw at ``position`` of ``epoch``'s global order. A hash (rather than e.g.
    ``base_seed + position``) keeps neighbouring seeds unrelated and is stable across Python versions and
    platforms, which a resumed run relies on."""
    digest = hashlib.blake2b(b"sample-seed/%d/%d/%d" % (base_seed, epoch, position), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def _epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool) -> list:
    """The epoch's index order; seeded with seed + epoch like torch's DistributedSampler."""
    if not shuffle:
        return list(range(num_samples))
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


class DistributedTrainSampler(torch.utils.data.Sampler):
    """Sharded, shuffled, resumable training sampler yielding ``(index, seed)``.

    With ``drop_last=True`` the epoch is trimmed so every rank gets the same whole number of ``batch_size``
    batches: all ranks run the same number of steps (none waits forever in a collective) and no sample is
    duplicated as padding. With ``drop_last=False`` the global order is padded by wrapping around, as torch's
    DistributedSampler does (``ceil(num_samples / num_replicas)`` items per rank); padded draws sit at new
    positions and so get their own seeds.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, batch_size: int = 1):
        self.num_samples, self.num_replicas, self.rank = num_samples, num_replicas, rank
        self.shuffle, self.seed, self.batch_size = shuffle, seed, batch_size
        self.epoch = self.start_offset = 0
        if drop_last:
            self.per_rank = (num_samples // (num_replicas * batch_size)) * batch_size
        else:
            self.per_rank = math.ceil(num_samples / num_replicas)
        if self.per_rank == 0:
            raise ValueError(
                f"sampler: num_samples={num_samples} gives no whole batch per rank with batch_size={batch_size} "
                f"and num_replicas={num_replicas}; lower the batch size, use fewer processes, or disable drop_last")

    def global_order(self) -> list:
        """The epoch's global sequence of indices: rank ``r`` yields positions ``r, r+R, ...`` of it, the first
        ``per_rank`` of them."""
        order = _epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        needed = self.per_rank * self.num_replicas
        while len(order) < needed:  # wrap-around padding (drop_last=False only)
            order.extend(order[: needed - len(order)])
        return order

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (new order, new seeds) and start it from the beginning."""
        self.epoch = epoch
        self.start_offset = 0

    def set_start_batch(self, batches_done: int) -> None:
        """Skip this rank's first ``batches_done`` batches of the current epoch (call after set_epoch, which resets
        it): a resume neither loads nor decodes the images already trained on."""
        max_batches = math.ceil(self.per_rank / self.batch_size)
        if batches_done > max_batches:
            raise ValueError(
                f"sampler: set_start_batch({batches_done}) exceeds the {max_batches} batches this rank has per "
                "epoch; the checkpoint's step count does not match this batch size / world size / dataset")
        self.start_offset = min(batches_done * self.batch_size, self.per_rank)

    def __len__(self) -> int:
        return self.per_rank - self.start_offset

    def __iter__(self):
        order = self.global_order()
        for j in range(self.start_offset, self.per_rank):
            position = self.rank + j * self.num_replicas
            yield order[position], sample_seed(self.seed, self.epoch, position)

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "start_offset": int(self.start_offset),
                "seed": int(self.seed), "num_replicas": int(self.num_replicas)}

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch, position and seed; the saved seed wins over the constructor's, so a resume continues the
        same sample order. After a change of world size the offset is translated through the global order
        (``start_offset * old_replicas`` draws were consumed), which works when that count divides evenly."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"sampler state_dict is missing keys {missing}; expected {list(_STATE_KEYS)}")
        saved_replicas = int(state["num_replicas"])
        consumed = int(state["start_offset"]) * saved_replicas
        if consumed % self.num_replicas:
            raise ValueError(
                f"sampler: cannot resume mid-epoch on {self.num_replicas} processes: the checkpoint consumed "
                f"{consumed} draws on {saved_replicas} processes, which does not split evenly; resume with "
                f"{saved_replicas} processes or from an end-of-epoch checkpoint")
        if consumed // self.num_replicas > self.per_rank:
            raise ValueError(
                f"sampler: checkpoint offset ({consumed} draws) is past the end of this epoch ({self.per_rank} per "
                f"rank x {self.num_replicas}); the dataset or batch size changed")
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.start_offset = consumed // self.num_replicas


class RASampler(DistributedTrainSampler):
    """Repeated-augmentation sampler (Hoffer et al. 2020, "Augment your batch").

    Every index of the epoch's permutation is repeated ``repetitions`` times in a row, so the copies of one image
    land on neighbouring ranks (or in one batch at world size 1), each at its own position and so with its own
    seed and augmentation. As torchvision's ``--ra-sampler``, an epoch still takes ``num_samples / num_replicas``
    draws per rank (whole batches, never padded): it costs the same, and covers fewer distinct images.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, batch_size: int = 1, repetitions: int = 3):
        self.repetitions = repetitions
        super().__init__(num_samples, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True, batch_size=batch_size)

    def global_order(self) -> list:
        order = _epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        return [index for index in order for _ in range(self.repetitions)]


class ExactEvalSampler(torch.utils.data.Sampler):
    """Evaluation sampler: every index exactly once across all ranks.

    torch's DistributedSampler pads with duplicates, which biases distributed accuracy; here rank ``r`` gets a
    contiguous shard, shard sizes differ by at most one, and a rank may get nothing when there are more ranks than
    samples (the metric reduction copes with empty shards).
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0):
        base, extra = divmod(num_samples, num_replicas)
        self.start = rank * base + min(rank, extra)  # the first `extra` ranks take one more item each
        self.stop = self.start + base + (1 if rank < extra else 0)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        return iter(range(self.start, self.stop))


class EndlessSampler(torch.utils.data.Sampler):
    """A training sampler's epochs one after another, without end. A DataLoader over it is iterated once, so its
    workers and prefetched batches are never torn down at an epoch boundary: benchmarks time the steady state
    whatever the size of the data set."""

    def __init__(self, sampler: DistributedTrainSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = 0
        while True:
            self.sampler.set_epoch(epoch)
            yield from iter(self.sampler)
            epoch += 1
