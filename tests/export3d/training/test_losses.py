"""Loss terms of generator training against independent ground truth.

- GAN losses: the non-saturating logistic loss of paper-spec 6.2 (EG3D / StyleGAN2), checked
  at hand-computed logits in its probability form (-log D(real) - log(1 - D(fake)),
  -log D(fake) with D = sigmoid(logit)), plus the direction each term moves.
- R1: discriminators whose input gradient is known in closed form (linear, quadratic); the
  trainer's lazy weighting 0.5 * gamma * r1_every (StyleGAN2) on top of the penalty.
- Density regularisation: a tri-plane whose density is a pyramid with gradient of known norm,
  so E|sigma(x) - sigma(x + eps)| = jitter * |grad sigma| * sqrt(2 / pi).
- SSIM / MS-SSIM: scikit-image's structural_similarity with the project's parameters.
- D's blur: a direct 2-D convolution in numpy with edge padding; an impulse's spread is
  sigma; the fade's schedule; the images the trainer's D is shown.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from skimage.transform import downscale_local_mean

from export3d.config import get_config
from export3d.renderer import OSGDecoder, RayMarchSettings
from export3d.training.losses import (MS_SSIM_WEIGHTS, d_blur_sigma, density_regularisation,
                                      discriminator_loss, gaussian_blur, generator_adv_loss,
                                      ms_ssim, r1_penalty, ssim)
from export3d.training.trainer import TrainConfig, Trainer, load_batch


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- adversarial losses -----------------------------------------------------------------------

REAL = [2.0, -0.5, 0.0]
FAKE = [-1.0, 1.5, 0.25, -3.0]


def test_discriminator_loss_is_the_logistic_loss_at_known_logits():
    # -mean log D(real) - mean log(1 - D(fake)), D = sigmoid: the paper-spec's D objective
    expected = (-np.mean([math.log(sigmoid(r)) for r in REAL])
                - np.mean([math.log(1 - sigmoid(f)) for f in FAKE]))
    got = discriminator_loss(torch.tensor(REAL), torch.tensor(FAKE)).item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # undecided discriminator (all logits 0): log 2 for the real term + log 2 for the fake one
    zero = discriminator_loss(torch.zeros(4), torch.zeros(4)).item()
    assert zero == pytest.approx(2 * math.log(2), rel=1e-6)


def test_discriminator_loss_falls_as_real_logits_rise_and_fake_logits_fall():
    grid = torch.linspace(-4, 4, 9)
    real_sweep = torch.stack([discriminator_loss(r.view(1), torch.zeros(1)) for r in grid])
    fake_sweep = torch.stack([discriminator_loss(torch.zeros(1), f.view(1)) for f in grid])
    assert (real_sweep.diff() < 0).all(), real_sweep
    assert (fake_sweep.diff() > 0).all(), fake_sweep
    # a perfect discriminator costs ~0, a perfectly fooled one a lot; the loss is never negative
    assert discriminator_loss(torch.tensor([20.0]), torch.tensor([-20.0])).item() < 1e-8
    assert discriminator_loss(torch.tensor([-5.0]), torch.tensor([5.0])).item() == \
        pytest.approx(2 * math.log1p(math.exp(5.0)), rel=1e-6)
    assert (real_sweep >= 0).all() and (fake_sweep >= 0).all()


def test_generator_adv_loss_is_non_saturating_at_known_logits():
    # -mean log D(fake)
    expected = -np.mean([math.log(sigmoid(f)) for f in FAKE])
    assert generator_adv_loss(torch.tensor(FAKE)).item() == pytest.approx(expected, rel=1e-6)
    assert generator_adv_loss(torch.zeros(3)).item() == pytest.approx(math.log(2), rel=1e-6)
    # lower when the fakes fool D more
    sweep = torch.stack([generator_adv_loss(f.view(1)) for f in torch.linspace(-4, 4, 9)])
    assert (sweep.diff() < 0).all() and (sweep > 0).all(), sweep
    # non-saturating: d/dlogit = -(1 - sigmoid(logit)) / N, ~-1/N when D confidently rejects
    logits = torch.tensor([-8.0, 0.0, 3.0], requires_grad=True)
    generator_adv_loss(logits).backward()
    expected_grad = [-(1 - sigmoid(v)) / 3 for v in (-8.0, 0.0, 3.0)]
    np.testing.assert_allclose(logits.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)


# -- R1 ---------------------------------------------------------------------------------------

class LinearD(torch.nn.Module):
    """``<W, image> + <V, raw> + <u, camera>`` per sample: input gradient (W, V) everywhere."""

    def __init__(self, size=8, raw=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(3, size, size, generator=g) * 0.3)
        self.v = torch.nn.Parameter(torch.randn(3, raw, raw, generator=g) * 0.7)
        self.u = torch.nn.Parameter(torch.randn(25, generator=g))

    def forward(self, image, image_raw, camera):
        return ((image * self.w).flatten(1).sum(1) + (image_raw * self.v).flatten(1).sum(1)
                + camera @ self.u)


class QuadraticD(torch.nn.Module):
    """``a/2 |image|^2 + b/2 |raw|^2`` per sample: input gradient (a image, b raw)."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, image, image_raw, camera):
        return (0.5 * self.a * image.square().flatten(1).sum(1)
                + 0.5 * self.b * image_raw.square().flatten(1).sum(1))


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
    d = LinearD()
    g = torch.Generator().manual_seed(1)
    image, raw = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    camera = torch.randn(3, 25, generator=g)
    expected = float((d.w.detach().double() ** 2).sum() + (d.v.detach().double() ** 2).sum())
    penalty = r1_penalty(d, image, raw, camera)
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    # differentiable in D's parameters (what the D step needs): d/dW |W|^2 = 2 W
    w_grad, v_grad = torch.autograd.grad(penalty, [d.w, d.v])
    torch.testing.assert_close(w_grad, 2 * d.w.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v_grad, 2 * d.v.detach(), rtol=1e-5, atol=1e-6)


def test_r1_penalty_is_the_batch_mean_of_per_sample_squared_gradient_norms():
    a, b = 0.5, 2.0
    g = torch.Generator().manual_seed(2)
    image, raw = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    per_sample = (a ** 2 * image.double().square().flatten(1).sum(1)
                  + b ** 2 * raw.double().square().flatten(1).sum(1))
    penalty = r1_penalty(QuadraticD(a, b), image, raw, torch.zeros(4, 25))
    assert penalty.item() == pytest.approx(per_sample.mean().item(), rel=1e-5)


def step_on_a_fixed_batch(dataset, out, **changes) -> dict[str, float]:
    """One step of a fresh tiny trainer (seed 0) with TrainConfig ``changes``, on two fixed
    (source, driver) pairs of the fixture clip: its loss terms."""
    base = TrainConfig(steps=10, batch=2, log_every=10 ** 6, sample_every=10 ** 6,
                       save_every=10 ** 6)
    trainer = Trainer(get_config("tiny"), dataset, out,
                      TrainConfig(**{**base.to_dict(), **changes}), progress=False)
    clip = dataset.clips[0]
    return trainer.train_step(load_batch([(clip, 0, 10), (clip, 3, 20)], "cpu"))


def test_trainer_weights_r1_by_half_gamma_times_its_interval(dataset, tmp_path):
    """StyleGAN2's lazy R1: every r1_every steps, gamma / 2 * r1_every * penalty joins D's loss.
    Two runs from the same state differing only in gamma: d(gamma) - d(0) is exactly that."""
    gamma, every = 3.0, 4

    def d_step(r1_gamma):
        return step_on_a_fixed_batch(dataset, tmp_path / str(r1_gamma), adv_start=0,
                                     density_weight=0.0, r1_gamma=r1_gamma, r1_every=every)

    with_r1, without = d_step(gamma), d_step(0.0)
    assert "r1" in with_r1 and "r1" not in without and with_r1["r1"] > 0
    assert with_r1["g_adv"] == pytest.approx(without["g_adv"], rel=1e-6)  # same state
    assert with_r1["d"] - without["d"] == pytest.approx(0.5 * gamma * every * with_r1["r1"],
                                                        rel=1e-4, abs=1e-6)


# -- the blur of D's images --------------------------------------------------------------------

def numpy_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A direct (non-separable) 2-D convolution with the outer product of the sampled Gaussian,
    edge-padded, in float64."""
    r = math.ceil(3 * sigma)
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    kernel = np.outer(g, g) / g.sum() ** 2
    padded = np.pad(image, ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    h, w = image.shape[-2:]
    out = np.zeros(image.shape)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out += kernel[dy, dx] * padded[..., dy:dy + h, dx:dx + w]
    return out


@pytest.mark.parametrize("sigma", [0.4, 1.25, 3.0])
def test_d_blur_is_the_2d_gaussian_convolution_with_edges_replicated(sigma):
    image = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(1)) * 2 - 1
    got = gaussian_blur(image, sigma)
    np.testing.assert_allclose(got.numpy(), numpy_blur(image.double().numpy(), sigma),
                               atol=2e-6, rtol=0)
    assert torch.equal(gaussian_blur(image, 0.0), image)
    flat = torch.full((1, 3, 16, 16), -0.3)
    assert torch.allclose(gaussian_blur(flat, sigma), flat, atol=1e-6)  # borders included


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_d_blur_spreads_an_impulse_by_sigma(sigma):
    size = 64
    impulse = torch.zeros(1, 1, size, size, dtype=torch.float64)
    impulse[0, 0, size // 2, size // 2] = 1.0
    out = gaussian_blur(impulse, sigma)[0, 0]
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)  # taps computed in float32
    x = torch.arange(size, dtype=torch.float64) - size // 2
    var_x = (out.sum(0) * x * x).sum().item()
    var_y = (out.sum(1) * x * x).sum().item()
    # 3-sigma truncation keeps ~97.3 % of a continuous Gaussian's variance
    assert var_x == pytest.approx(sigma ** 2, rel=0.04) and var_y == pytest.approx(var_x)


def test_d_blur_fades_linearly_over_its_images_and_scales_with_the_image():
    assert d_blur_sigma(0, 10.0, 200.0, 512) == 10.0
    assert d_blur_sigma(0, 10.0, 200.0, 64) == 1.25
    assert d_blur_sigma(50_000, 10.0, 200.0, 512) == pytest.approx(7.5)
    assert d_blur_sigma(200_000, 10.0, 200.0, 512) == 0.0
    assert d_blur_sigma(10 ** 9, 10.0, 200.0, 512) == 0.0
    assert d_blur_sigma(0, 0.0, 200.0, 512) == 0.0 and d_blur_sigma(0, 10.0, 0.0, 512) == 0.0


def test_trainer_shows_d_blurred_final_images_from_adv_start(dataset, tmp_path):
    config = TrainConfig(steps=10, batch=2, log_every=10 ** 6, sample_every=10 ** 6,
                         save_every=10 ** 6, adv_start=3, density_weight=0.0, r1_gamma=0.0,
                         d_blur_sigma=8.0, d_blur_fade_kimg=0.01)  # gone after 10 images
    trainer = Trainer(get_config("tiny"), dataset, tmp_path, config, progress=False)
    # 64 px: 8 px at 512 px is 1 px; D has seen (step - adv_start) * batch images
    assert [trainer.d_blur(k) for k in (0, 3, 4, 7, 8)] == pytest.approx([1.0, 1.0, 0.8, 0.2, 0])
    seen = []
    forward = trainer.disc.forward
    trainer.disc.forward = lambda image, raw, camera: seen.append((image, raw)) or \
        forward(image, raw, camera)
    clip = dataset.clips[0]
    batch = load_batch([(clip, 0, 10), (clip, 3, 20)], "cpu")
    trainer.step = 4  # blur 0.8 px
    trainer.train_step(batch)
    # D's calls: G's adversarial term (fake), then D's fake and real
    assert len(seen) == 3
    real_image, real_raw = seen[2]
    assert torch.allclose(real_image, gaussian_blur(batch["driving"], 0.8), atol=1e-6)
    assert not torch.allclose(real_image, batch["driving"], atol=1e-2)
    assert real_raw.shape[-1] == 16  # the raw render's counterpart goes in unblurred
    assert torch.allclose(real_raw, torch.nn.functional.interpolate(
        batch["driving"], size=16, mode="area"))
    seen.clear()
    trainer.step = 8  # faded out: D sees the images themselves
    trainer.train_step(batch)
    assert torch.equal(seen[2][0], batch["driving"])


# -- density regularisation -------------------------------------------------------------------

def test_trainer_weights_the_density_term_by_its_interval(dataset, tmp_path):
    """Lazy regularisation (EG3D's Greg phase): on the steps it runs, the density term joins
    G's loss weighted density_weight * density_every. Two runs from the same state differing
    only in the weight: loss(w) - loss(0) is exactly that."""
    weight, every = 0.3, 4

    def g_step(density_weight):
        return step_on_a_fixed_batch(dataset, tmp_path / str(density_weight), adv_start=10 ** 6,
                                     density_weight=density_weight, density_every=every)

    with_term, without = g_step(weight), g_step(0.0)
    assert "density" in with_term and "density" not in without and with_term["density"] > 0
    assert with_term["loss"] - without["loss"] == pytest.approx(
        weight * every * with_term["density"], rel=1e-4, abs=1e-7)


def pyramid_model(a: float, box: float, planes: int = 512):
    """A stub model whose density is ``a * min(1 - |u|, 1 - |v|)`` (u, v = 2x/box, 2y/box).

    The XY plane's channel 0 holds 3 a * pyramid at its texel centres (sample_triplane averages
    the three planes, the others are 0); the decoder is the identity on channel 0
    (softplus(f) - softplus(-f) = f, exactly). The pyramid is 0 on the box's faces, so the zero
    padding outside continues it linearly; |grad sigma| = 2 a / box except on the diagonals."""
    centres = (2 * torch.arange(planes, dtype=torch.float64) + 1) / planes - 1
    u, v = centres[None, :], centres[:, None]  # grid_sample: x -> width, y -> height
    triplane = torch.zeros(1, 3, 1, planes, planes)
    triplane[0, 0, 0] = (3 * a * torch.minimum(1 - u.abs(), 1 - v.abs())).float()
    decoder = OSGDecoder(channels=1, hidden=2)
    with torch.no_grad():
        decoder.fc1.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        decoder.fc1.bias.zero_()
        decoder.fc2.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        decoder.fc2.bias.zero_()
    settings = RayMarchSettings(near=0.5, far=1.5, samples_coarse=4, samples_fine=4,
                                box_warp=box)
    return SimpleNamespace(renderer=SimpleNamespace(settings=settings, decoder=decoder)), triplane


@pytest.mark.parametrize("a, box, jitter", [(10.0, 1.0, 0.004), (4.0, 2.0, 0.01)])
def test_density_regularisation_matches_the_closed_form_of_a_linear_field(a, box, jitter):
    # sigma(x) - sigma(x + eps) = -grad . eps ~ N(0, jitter^2 |grad|^2): E|.| = jitter |grad|
    # sqrt(2/pi). 2e5 points: Monte-Carlo std 0.755 / sqrt(2e5) = 0.17 %. Biases, all downward:
    # points within a jitter of the pyramid's ridges (-0.3 %, an analytic 1e7-point estimate)
    # and the bilinear rounding of the ridges in the texels they cross (2 / 512 of the area);
    # measured -0.9 % and -1.1 % for the two cases. Tolerance 2 %.
    model, triplane = pyramid_model(a, box)
    torch.manual_seed(0)
    got = density_regularisation(model, triplane.expand(2, -1, -1, -1, -1), points=100_000,
                                 jitter=jitter).item()
    expected = jitter * (2 * a / box) * math.sqrt(2 / math.pi)
    assert got == pytest.approx(expected, rel=0.02)
    # a constant density (decoder ignores the planes) costs nothing
    with torch.no_grad():
        model.renderer.decoder.fc2.weight.zero_()
        model.renderer.decoder.fc2.bias.fill_(0.7)
    flat = density_regularisation(model, triplane, points=1000, jitter=jitter).item()
    assert flat == 0.0


# -- SSIM / MS-SSIM against scikit-image ------------------------------------------------------

def skimage_ssim(x: np.ndarray, y: np.ndarray, k1: float = 0.01) -> float:
    """scikit-image with the project's parameters: Gaussian window sigma 1.5 (truncate 3.5 ->
    11 taps, as the project's 11-tap window), K1 0.01, K2 0.03, data range 2 (images in
    [-1, 1]), population (not sample) covariance as in Wang et al. skimage filters the whole
    image with reflect padding and then crops (11 - 1) / 2 px per side, which leaves exactly
    the project's 'valid' convolution region; the per-channel mean equals the project's mean
    over channels and pixels. So they agree up to float32 rounding (measured <= 1.2e-7 over 20
    pairs; tolerance 1e-5)."""
    return structural_similarity(x, y, data_range=2.0, channel_axis=0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, K1=k1, K2=0.03)


def image_pair(size: int, seed: int):
    rng = np.random.default_rng(seed)
    # smooth structure + noise, correlated but not equal: SSIM well inside (0, 1). Mean 0.3 keeps
    # local means positive, so the luminance factor (and SSIM at every scale) stays positive.
    base = rng.standard_normal((3, size // 4, size // 4))
    x = 0.3 + np.kron(base, np.ones((4, 4))) * 0.25 + rng.standard_normal((3, size, size)) * 0.2
    y = 0.8 * x + 0.1 + rng.standard_normal((3, size, size)) * 0.15
    return np.clip(x, -1, 1), np.clip(y, -1, 1)


def test_ssim_matches_scikit_image():
    pairs = [image_pair(64, s) for s in range(3)] + [image_pair(32, 7)]
    for x, y in pairs:
        expected = skimage_ssim(x, y)
        got = ssim(torch.from_numpy(x)[None].float(), torch.from_numpy(y)[None].float())
        assert 0.2 < expected < 0.95
        assert got.item() == pytest.approx(expected, abs=1e-5)
    # batched: one value per image
    xs = torch.stack([torch.from_numpy(p[0]) for p in pairs[:3]]).float()
    ys = torch.stack([torch.from_numpy(p[1]) for p in pairs[:3]]).float()
    np.testing.assert_allclose(ssim(xs, ys).numpy(), [skimage_ssim(*p) for p in pairs[:3]],
                               atol=1e-5)
    assert ssim(xs, xs).numpy() == pytest.approx([1, 1, 1], abs=1e-5)


def test_ms_ssim_matches_a_scikit_image_composition():
    """Wang et al. 2003: prod_j cs_j^w_j over the finer scales times SSIM^w_M at the coarsest,
    2x2 mean-pooling between scales. A 64 px image supports 64, 32, 16 (min side 16), so the
    project uses the first three standard weights renormalised to sum 1 (its documented
    choice). cs_j comes from skimage with K1 = 1e4: C1 then dwarfs the means, the luminance
    factor is 1 to ~1e-9 and skimage returns the mean contrast-structure term."""
    weights = np.array(MS_SSIM_WEIGHTS[:3]) / sum(MS_SSIM_WEIGHTS[:3])
    for seed in range(3):
        x, y = image_pair(64, seed)
        expected = 1.0
        for j, w in enumerate(weights):
            last = j == len(weights) - 1
            expected *= skimage_ssim(x, y, k1=0.01 if last else 1e4) ** w
            x, y = downscale_local_mean(x, (1, 2, 2)), downscale_local_mean(y, (1, 2, 2))
        x, y = image_pair(64, seed)
        got = ms_ssim(torch.from_numpy(x)[None].float(), torch.from_numpy(y)[None].float())
        assert got.item() == pytest.approx(expected, abs=1e-5)
