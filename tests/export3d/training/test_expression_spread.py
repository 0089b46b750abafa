"""tracking.md 4.4's standardisation: the spread sigma_k is measured on the training frames,
pre-training stores it with CLeBS, generator training and inference take it from there, and a
resumed run keeps the one it started with. And pre-training's held-out score (retrieval of
each held-out frame's crop from its expression code)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from export3d.checkpoint import load_checkpoint, read_config
from export3d.config import get_config
from export3d.errors import UserError
from export3d.model import build_model
from export3d.training.clebs_train import heldout_retrieval, retrieval_ranks, train_clebs
from export3d.training.data import SPREAD_FLOOR, SPREAD_MIN, holdout_split, to_tensor
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


# -- the held-out score of pre-training ----------------------------------------------------------

def test_retrieval_ranks_count_the_crops_scored_above_ones_own():
    # codes (rows) against crops (columns), pair k on the diagonal
    sim = torch.tensor([[0.9, 0.1, 0.2],    # own crop first: rank 0
                        [0.8, 0.5, 0.6],    # two crops above: rank 2
                        [0.3, 0.7, 0.4]])   # one crop above: rank 1
    assert retrieval_ranks(sim).tolist() == [0, 2, 1]
    assert retrieval_ranks(torch.eye(5)).tolist() == [0] * 5
    assert retrieval_ranks(torch.ones(4, 4)).tolist() == [0] * 4  # ties do not count against


def test_pretraining_reports_its_held_out_retrieval(dataset, tmp_path):
    result = train_clebs(get_config("tiny"), dataset, tmp_path / "c.safetensors", steps=2,
                         frames=4, progress=False, log=lambda *_: None)
    held = result["heldout"]
    clip = dataset.clips[0]
    n = len(dataset.positions(clip, "interp")) + len(dataset.positions(clip, "extrap"))
    assert held["frames"] == n >= 2 and list(held["clips"]) == [clip.name]
    assert held["chance_mean_rank"] == (n - 1) / 2
    assert 0 <= held["mean_rank"] <= n - 1 and 0 <= held["top1"] <= 1
    assert held["top1"] * n == pytest.approx(round(held["top1"] * n))  # a count of frames
    _, meta = read_config(tmp_path / "c.safetensors")
    assert json.loads(meta["clebs_heldout"]) == held


def test_held_out_retrieval_is_perfect_for_an_encoder_that_sees_the_code(dataset):
    """Ground truth: an "image encoder" that returns each crop's own CLeBS embedding (looked up
    by the crop's pixels) retrieves every frame first; one that returns a constant, none
    better than ties allow."""
    clebs = build_model(get_config("tiny")).clebs.eval()
    clip = dataset.clips[0]
    pos = np.concatenate([dataset.positions(clip, "interp"), dataset.positions(clip, "extrap")])
    table = {}
    with torch.no_grad():
        for k in pos:
            crop = to_tensor([clip.image(k)])
            table[crop.numpy().tobytes()] = clebs(torch.from_numpy(clip.expr[k:k + 1]))[0]

    def oracle(images):
        return torch.stack([table[x[None].numpy().tobytes()] for x in images])

    held = heldout_retrieval(oracle, clebs, dataset)
    assert held["top1"] == 1.0 and held["mean_rank"] == 0.0
    shuffled = heldout_retrieval(lambda images: torch.randn(len(images), 64,
                                                            generator=torch.Generator()
                                                            .manual_seed(0)), clebs, dataset)
    assert shuffled["top1"] < 1.0 and shuffled["mean_rank"] > 0
