"""Samplers that make training exactly resumable and evaluation exact.

Training samplers yield ``(index, seed)`` pairs. ``seed`` is derived only from
(base seed, epoch, global position of the draw in the epoch's global order), so
a dataset that seeds its per-sample augmentation with it produces the same
pixels no matter how many DataLoader workers run, how many ranks share the
epoch, or whether the run was interrupted and resumed mid-epoch.

The "global order" of an epoch is one list of dataset indices that does not
depend on the world size; rank ``r`` of ``R`` takes positions ``r, r+R, r+2R,
...`` of it (the same split torch's ``DistributedSampler`` uses). Position
``p`` therefore always refers to the same index and the same seed.
"""

import hashlib
import math

import torch

_SEED_BITS = 63
_STATE_KEYS = ("epoch", "start_offset", "seed", "num_replicas")


def sample_seed(base_seed: int, epoch: int, position: int) -> int:
    """Return a 63-bit seed for the draw at ``position`` of ``epoch``'s global order.

    A cryptographic hash (rather than e.g. ``base_seed + position``) keeps seeds of
    neighbouring positions and epochs statistically unrelated, and it is stable
    across Python versions and platforms, which a resumed run relies on.
    """
    payload = b"sample-seed/%d/%d/%d" % (base_seed, epoch, position)
    digest = hashlib.blake2b(payload, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def _check_int(name: str, value, minimum: int) -> int:
    """Validate an integer option so mistakes fail at construction, not mid-epoch."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"sampler option {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"sampler option {name} must be >= {minimum}, got {value}")
    return value


def _check_world(num_replicas: int, rank: int) -> None:
    _check_int("num_replicas", num_replicas, 1)
    _check_int("rank", rank, 0)
    if rank >= num_replicas:
        raise ValueError(f"sampler option rank={rank} must be < num_replicas={num_replicas}")


def _epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool) -> list:
    """The epoch's index order; seeded with seed + epoch like torch's DistributedSampler."""
    if not shuffle:
        return list(range(num_samples))
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


class DistributedTrainSampler(torch.utils.data.Sampler):
    """Sharded, shuffled, resumable training sampler yielding ``(index, seed)``.

    With ``drop_last=True`` the epoch is trimmed so every rank gets the same whole
    number of ``batch_size`` batches: all ranks then run the same number of steps
    (no rank waits forever in a collective) and no sample is duplicated as padding.
    With ``drop_last=False`` the global order is padded by wrapping around, as torch's
    ``DistributedSampler`` does, so each rank gets ``ceil(num_samples / num_replicas)``
    items; padded draws sit at new positions and so get their own seeds.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, batch_size: int = 1):
        _check_int("num_samples", num_samples, 1)
        _check_world(num_replicas, rank)
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.batch_size = batch_size
        self.epoch = 0
        self.start_offset = 0
        self.per_rank = self._compute_per_rank()
        if self.per_rank == 0:
            raise ValueError(
                f"sampler: num_samples={num_samples} gives no whole batch per rank with "
                f"batch_size={batch_size} and num_replicas={num_replicas}; lower the batch size, "
                "use fewer processes, or disable drop_last")

    def _compute_per_rank(self) -> int:
        """Items each rank yields in a full epoch."""
        if self.drop_last:
            return (self.num_samples // (self.num_replicas * self.batch_size)) * self.batch_size
        return math.ceil(self.num_samples / self.num_replicas)

    def global_order(self) -> list:
        """The current epoch's global sequence of indices, before splitting across ranks.

        Rank ``r`` yields positions ``r, r+R, ...`` of this list, the first
        ``per_rank`` of them; positions past ``per_rank * num_replicas`` are dropped.
        """
        order = _epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        needed = self.per_rank * self.num_replicas
        while len(order) < needed:  # wrap-around padding (drop_last=False only)
            order.extend(order[: needed - len(order)])
        return order

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (new order, new seeds) and start it from the beginning."""
        self.epoch = _check_int("epoch", epoch, 0)
        self.start_offset = 0

    def set_start_batch(self, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches of this rank for the current epoch only.

        Skipping happens in the sampler, so a resume neither loads nor decodes the
        images already trained on. Call after ``set_epoch``, which resets it.
        """
        _check_int("batches_done", batches_done, 0)
        max_batches = math.ceil(self.per_rank / self.batch_size)
        if batches_done > max_batches:
            raise ValueError(
                f"sampler: set_start_batch({batches_done}) exceeds the {max_batches} batches this "
                "rank has per epoch; the checkpoint's step count does not match this batch size / "
                "world size / dataset")
        self.start_offset = min(batches_done * self.batch_size, self.per_rank)

    def __len__(self) -> int:
        return self.per_rank - self.start_offset

    def __iter__(self):
        order = self.global_order()
        for j in range(self.start_offset, self.per_rank):
            position = self.rank + j * self.num_replicas
            yield order[position], sample_seed(self.seed, self.epoch, position)

    def state_dict(self) -> dict:
        """Plain-typed state so it can be saved with torch.save(weights_only=True) or JSON."""
        return {"epoch": int(self.epoch), "start_offset": int(self.start_offset),
                "seed": int(self.seed), "num_replicas": int(self.num_replicas)}

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch, position and seed saved by ``state_dict``.

        The saved seed wins over the constructor's, because resuming is meant to
        continue the same sample order. If the world size changed, the offset is
        translated through the global order (``start_offset * old_replicas`` draws
        were consumed); this only works when that count divides by the new world size.
        """
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"sampler state_dict is missing keys {missing}; expected {list(_STATE_KEYS)}")
        epoch = _check_int("state_dict['epoch']", state["epoch"], 0)
        offset = _check_int("state_dict['start_offset']", state["start_offset"], 0)
        saved_replicas = _check_int("state_dict['num_replicas']", state["num_replicas"], 1)
        consumed = offset * saved_replicas
        if consumed % self.num_replicas:
            raise ValueError(
                f"sampler: cannot resume mid-epoch on {self.num_replicas} processes: the checkpoint "
                f"consumed {consumed} draws on {saved_replicas} processes, which does not split evenly; "
                f"resume with {saved_replicas} processes or from an end-of-epoch checkpoint")
        new_offset = consumed // self.num_replicas
        if new_offset > self.per_rank:
            raise ValueError(
                f"sampler: checkpoint offset ({consumed} draws) is past the end of this epoch "
                f"({self.per_rank} per rank x {self.num_replicas}); the dataset or batch size changed")
        self.seed = _check_int("state_dict['seed']", state["seed"], 0)
        self.epoch = epoch
        self.start_offset = new_offset


class RASampler(DistributedTrainSampler):
    """Repeated-augmentation sampler (Hoffer et al. 2020, "Augment your batch").

    The epoch's permutation has every index repeated ``repetitions`` times in a row,
    so with the strided split the copies of one image land on neighbouring ranks
    (or in the same batch at world size 1) and each copy, being at its own position,
    gets its own seed and hence its own augmentation. As in torchvision's reference
    ``--ra-sampler``, an epoch still takes only about ``num_samples / num_replicas``
    draws per rank (rounded down to whole batches), so epochs cost the same as
    without repetition; it just covers fewer distinct images.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, batch_size: int = 1, repetitions: int = 3):
        self.repetitions = _check_int("repetitions", repetitions, 1)
        super().__init__(num_samples, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True, batch_size=batch_size)

    def _compute_per_rank(self) -> int:
        # Never more than num_samples draws in total, so the repeated list
        # (num_samples * repetitions long) never needs padding.
        return (self.num_samples // (self.num_replicas * self.batch_size)) * self.batch_size

    def global_order(self) -> list:
        """Permutation with each index repeated ``repetitions`` times consecutively."""
        order = _epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        return [index for index in order for _ in range(self.repetitions)]


class ExactEvalSampler(torch.utils.data.Sampler):
    """Evaluation sampler: every index exactly once across all ranks.

    torch's DistributedSampler pads with duplicates, which biases distributed
    accuracy; here rank ``r`` gets a contiguous shard, shard sizes differ by at most
    one, and a rank may get nothing when there are more ranks than samples (the
    metric reduction must then cope with empty shards).
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0):
        _check_int("num_samples", num_samples, 0)
        _check_world(num_replicas, rank)
        base, extra = divmod(num_samples, num_replicas)
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        # The first `extra` ranks take one more item each.
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (1 if rank < extra else 0)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        return iter(range(self.start, self.stop))


class EndlessSampler(torch.utils.data.Sampler):
    """A training sampler's epochs one after another, without end: epoch 0, 1, 2, ... (each reshuffled by the
    wrapped sampler's set_epoch). A DataLoader over it is iterated once, so its workers and their prefetched
    batches are never torn down at an epoch boundary; benchmarks use it so that timed steps measure steady
    state whatever the size of the data set."""

    def __init__(self, sampler: DistributedTrainSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = 0
        while True:
            self.sampler.set_epoch(epoch)
            yield from iter(self.sampler)
            epoch += 1
