"""tracking.md 4.4's standardisation: the spread sigma_k is measured on the training frames,
pre-training stores it with CLeBS, generator training and inference take it from there, and a
resumed run keeps the one it started with."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from export3d.checkpoint import load_checkpoint
from export3d.config import get_config
from export3d.errors import UserError
from export3d.training.clebs_train import train_clebs
from export3d.training.data import SPREAD_FLOOR, SPREAD_MIN, holdout_split
from export3d.training.trainer import TrainConfig, Trainer

DIGITS_RTOL = 5e-4  # the spread is stored to 4 significant digits


def quiet(**changes) -> TrainConfig:
    base = TrainConfig(steps=1, batch=2, log_every=10 ** 6, sample_every=10 ** 6,
                       save_every=10 ** 6, adv_start=10 ** 6)
    return TrainConfig(**{**base.to_dict(), **changes})


def test_the_spread_is_the_training_frames_deviation_with_a_floor(dataset):
    train = [c.expr[holdout_split(len(c))["train"]].astype(np.float64) for c in dataset.clips]
    codes = np.concatenate(train)
    deviation = np.sqrt(((codes - codes.mean(0)) ** 2).mean(0))
    floor = max(SPREAD_FLOOR * np.median(deviation), SPREAD_MIN)
    spread = np.array(dataset.expression_spread())
    moving = deviation > floor
    assert 0 < moving.sum() < 64  # this clip has channels above the floor and below it
    np.testing.assert_allclose(spread[moving], deviation[moving], rtol=DIGITS_RTOL)
    np.testing.assert_allclose(spread[~moving], floor, rtol=DIGITS_RTOL)

    # Held-out frames do not count; a training frame does.
    changed = copy.deepcopy(dataset)
    clip = changed.clips[0]
    held_out = np.setdiff1d(np.arange(len(clip)), changed.positions(clip, "train"))
    clip.expr[held_out] = 100.0
    assert changed.expression_spread() == dataset.expression_spread()
    clip.expr[changed.positions(clip, "train")[0]] = 100.0
    assert min(a / b for a, b in zip(changed.expression_spread(),
                                     dataset.expression_spread())) > 2


def test_pretraining_stores_the_spread_and_the_generator_takes_it(dataset, tmp_path):
    config = get_config("tiny")
    spread = dataset.expression_spread()
    path = tmp_path / "clebs.safetensors"
    result = train_clebs(config, dataset, path, steps=2, frames=4, progress=False,
                         log=lambda *_: None)
    assert result["expr_spread"] == spread
    clebs = load_checkpoint(path).clebs
    assert clebs.inv_spread.numel() == 64

    trainer = Trainer(config, dataset, tmp_path / "g", quiet(), init=str(path), progress=False)
    assert trainer.model.config.expr_spread == spread
    expr = torch.from_numpy(dataset.clips[0].expr[:4])
    with torch.no_grad():
        assert torch.equal(trainer.model.clebs(expr), clebs(expr))  # the frozen CLeBS, scaled
    # Reading --init's spread draws nothing: the generator starts from the weights a run
    # without --init starts from.
    plain = Trainer(config, dataset, tmp_path / "p", quiet(), progress=False)
    assert plain.model.config.expr_spread == spread  # no --init: this dataset's
    for name, value in plain.model.generator.state_dict().items():
        assert torch.equal(value, trainer.model.generator.state_dict()[name]), name

    with pytest.raises(UserError, match="--unit-spread cannot go with --init"):
        Trainer(config, dataset, tmp_path / "x", quiet(), init=str(path), progress=False,
                unit_spread=True)
    unit = Trainer(config, dataset, tmp_path / "u", quiet(), progress=False, unit_spread=True)
    assert unit.model.config.expr_spread is None and unit.model.clebs.inv_spread.numel() == 0
    assert train_clebs(config, dataset, tmp_path / "c2.safetensors", steps=1, frames=4,
                       progress=False, log=lambda *_: None,
                       unit_spread=True)["expr_spread"] is None


def test_a_run_resumes_only_with_the_spread_it_started_with(dataset, tmp_path):
    config = get_config("tiny")
    Trainer(config, dataset, tmp_path, quiet(), progress=False, unit_spread=True).fit()
    with pytest.raises(UserError, match=r"not standardised \(--unit-spread\)"):
        Trainer(config, dataset, tmp_path, quiet(steps=2), progress=False).resume()
    again = Trainer(config, dataset, tmp_path, quiet(steps=2), progress=False, unit_spread=True)
    assert again.resume() and again.step == 1
