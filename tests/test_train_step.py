"""TrainStep on its own: float16-style skipped steps are counted, not fatal, until too many in a row; a
non-finite loss without a scaler stops the run naming the epoch and step."""

import contextlib

import pytest
import torch

import train
import utils


def make_step(scaler):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = utils.LRSchedule(name="steplr", epochs=1, iters_per_epoch=100, base_lr=0.1)
    return train.TrainStep(model, torch.nn.CrossEntropyLoss(), optimizer, schedule=schedule, scaler=scaler,
                           autocast=contextlib.nullcontext, device=torch.device("cpu"))


def test_scaler_skips_are_counted_then_fatal_when_too_many_in_a_row():
    # The CPU GradScaler behaves as the CUDA one: inf gradients make it skip the step and lower its scale.
    step = make_step(torch.amp.GradScaler("cpu", init_scale=2.0**16))
    target = torch.tensor([0, 1])
    good, bad = torch.randn(2, 4), torch.full((2, 4), float("inf"))
    step(good, target, 0, 0)
    weights = step.model.weight.detach().clone()
    for i in range(3):
        step(bad, target, 0, i + 1)
    assert torch.equal(step.model.weight, weights), "a skipped step must not change the weights"
    step.check_health(0, 4)  # a few skips are normal
    assert step.take_skipped_count() == 3
    step(good, target, 0, 5)  # a good step ends the run of skips
    assert int(step.skipped_in_a_row) == 0
    for i in range(train.MAX_CONSECUTIVE_SKIPPED_STEPS + 1):
        step(bad, target, 0, 6 + i)
    with pytest.raises(train.NonFiniteLossError, match="float16 steps in a row had inf/NaN gradients"):
        step.check_health(0, 57)


def test_nonfinite_loss_without_scaler_names_epoch_and_step():
    step = make_step(torch.amp.GradScaler("cpu", enabled=False))
    step(torch.randn(2, 4), torch.tensor([0, 1]), 2, 0)
    step.check_health(2, 1)
    step(torch.full((2, 4), float("nan")), torch.tensor([0, 1]), 2, 1)
    with pytest.raises(train.NonFiniteLossError, match="NaN or Inf at epoch 2, step <= 2"):
        step.check_health(2, 2)
