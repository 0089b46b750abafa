"""The perceptual loss exists only with the user's VGG-16 weights, and then behaves."""
from __future__ import annotations

import pytest
import torch

from export3d.config import get_config
from export3d.errors import UserError
from export3d.training.losses import PerceptualLoss
from export3d.training.trainer import TrainConfig, Trainer, load_batch


@pytest.fixture
def vgg_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    weights = {f"features.{k}": v for k, v in PerceptualLoss().features.state_dict().items()}
    path = tmp_path / "vgg16.safetensors"
    save_file(weights, str(path))
    return path


def test_distance_is_zero_on_equal_images_and_grows_with_the_difference(vgg_file):
    loss = PerceptualLoss.from_file(vgg_file)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(loss(x, x)) == 0.0
    near, far = x + 0.05 * torch.randn_like(x), x + 0.5 * torch.randn_like(x)
    assert 0 < float(loss(x, near)) < float(loss(x, far))
    y = x.clone().requires_grad_(True)
    loss(y, near).backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())


def test_wrong_weight_files_are_one_sentence(vgg_file, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(vgg_file))
    del weights["features.21.weight"]
    save_file(weights, str(tmp_path / "short.safetensors"))
    with pytest.raises(UserError, match="lacks VGG-16 weight features.21.weight"):
        PerceptualLoss.from_file(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        PerceptualLoss.from_file(tmp_path / "junk.safetensors")


def test_trainer_adds_the_term_only_when_given_weights(dataset, vgg_file, tmp_path):
    config = TrainConfig(steps=10, batch=2, adv_start=10 ** 6, density_weight=0.0)
    clip = dataset.clips[0]
    batch = load_batch([(clip, 0, 10), (clip, 1, 20)], "cpu")
    plain = Trainer(get_config("tiny"), dataset, tmp_path / "a", config, progress=False)
    assert "perceptual" not in plain.train_step(batch)
    with_vgg = Trainer(get_config("tiny"), dataset, tmp_path / "b", config, progress=False,
                       perceptual=str(vgg_file))
    terms = with_vgg.train_step(batch)
    # on the final image and, as paper-spec 6.2's LPIPS(raw), on the raw render
    assert terms["perceptual"] > 0 and terms["perceptual_raw"] > 0
    assert terms["total"] == pytest.approx(terms["l1"] + terms["l1_raw"] + terms["ssim"]
                                           + terms["ssim_raw"] + terms["perceptual"]
                                           + terms["perceptual_raw"], rel=1e-5)
