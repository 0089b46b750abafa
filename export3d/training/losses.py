"""Losses and the discriminator of generator training (paper-spec 6.2).

- :func:`ssim` / :func:`ms_ssim`: structural similarity with an 11-tap Gaussian window
  (sigma 1.5, constants K1 = 0.01, K2 = 0.03 on a data range of 2 for images in [-1, 1]);
  multi-scale with the standard five scale weights, truncated and renormalised to the scales
  an image of this size supports (a 64 px crop has three).
- :class:`PerceptualLoss`: VGG-16 feature distance, only with weights the user provides.
- :class:`DualDiscriminator`: EG3D's dual discrimination on 6 channels (final image and the
  raw neural render up-sampled to the same size), a small residual CNN whose logit is
  conditioned on the camera label by projection (``<phi(x), embed(c)>`` added to the logit).
- :func:`d_blur_sigma`, :func:`gaussian_blur`: EG3D's blur of the final images D is shown
  (real and generated alike), a Gaussian whose sigma starts at 10 px at 512 px (scaled to the
  image size) and fades linearly to 0 over the first 200 k images D sees; the raw render goes
  to D unblurred, as in EG3D.
- :func:`generator_adv_loss`, :func:`discriminator_loss` (non-saturating logistic),
  :func:`r1_penalty`, :func:`density_regularisation` (L1 between densities at random points
  and at jittered points, EG3D's ``density_reg``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, data_range: float, window: int = 11,
                sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    cs = (2 * cov + c2) / (vx + vy + c2)
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image SSIM ``[B]`` of ``[B, C, H, W]`` images."""
    return _ssim_parts(x.float(), y.float(), data_range)[0]


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0,
            min_size: int = 16) -> torch.Tensor:
    """Per-image multi-scale SSIM ``[B]``; scales halve the image while its side >= min_size."""
    x, y = x.float(), y.float()
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(x.shape[-2:]) // 2 ** scales >= min_size:
        scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=x.device)
    weights = weights / weights.sum()
    values = []
    for k in range(scales):
        full, cs = _ssim_parts(x, y, data_range)
        values.append((full if k == scales - 1 else cs).clamp_min(1e-6))
        if k < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.prod(torch.stack(values, 0) ** weights[:, None], 0)


def reconstruction_loss(out: dict, target: torch.Tensor, ssim_weight: float = 1.0,
                        perceptual=None, perceptual_weight: float = 1.0) -> dict:
    """L1 + (1 - MS-SSIM) on the final image and on the raw render against the down-sampled
    target (images in [-1, 1]), plus ``perceptual`` (a :class:`PerceptualLoss`) on both when
    given, as paper-spec 6.2's LPIPS and LPIPS(raw). Returns the terms and their sum under
    ``"total"``."""
    raw = out["image_raw"].float()
    small = F.interpolate(target, size=raw.shape[-2:], mode="area")
    image = out["image"].float()
    terms = {
        "l1": (image - target).abs().mean(),
        "ssim": (1 - ms_ssim(image, target)).mean(),
        "l1_raw": (raw - small).abs().mean(),
        "ssim_raw": (1 - ssim(raw, small)).mean(),
    }
    terms["total"] = terms["l1"] + terms["l1_raw"] + ssim_weight * (terms["ssim"]
                                                                     + terms["ssim_raw"])
    if perceptual is not None:
        terms["perceptual"] = perceptual(image, target)
        terms["perceptual_raw"] = perceptual(raw, small)
        terms["total"] = terms["total"] + perceptual_weight * (terms["perceptual"]
                                                               + terms["perceptual_raw"])
    return terms


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1)
        self.conv2 = nn.Conv2d(cin, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)


class DualDiscriminator(nn.Module):
    """``(image [B, 3, S, S], image_raw [B, 3, r, r], camera [B, 25]) -> logit [B]``."""

    def __init__(self, image_size: int, channels: tuple[int, ...] = (32, 64, 128, 128),
                 camera_dim: int = 25):
        super().__init__()
        self.image_size = image_size
        self.stem = nn.Conv2d(6, channels[0], 1)
        blocks, size = [], image_size
        for cin, cout in zip(channels[:-1], channels[1:]):
            blocks.append(_Block(cin, cout))
            size //= 2
        self.blocks = nn.Sequential(*blocks)
        width = channels[-1]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * size * size, width),
                                  nn.LeakyReLU(0.2))
        self.out = nn.Linear(width, 1)
        self.embed = nn.Sequential(nn.Linear(camera_dim, width), nn.LeakyReLU(0.2),
                                   nn.Linear(width, width))

    def forward(self, image: torch.Tensor, image_raw: torch.Tensor, camera: torch.Tensor):
        raw = F.interpolate(image_raw.float(), size=image.shape[-2:], mode="bilinear",
                            align_corners=False, antialias=False)
        x = self.stem(torch.cat([image.float(), raw], 1))
        h = self.head(self.blocks(x))
        projection = (h * self.embed(camera.float())).sum(1) / math.sqrt(h.shape[1])
        return self.out(h).squeeze(1) + projection


def d_blur_sigma(images_seen: int, sigma: float, fade_kimg: float, image_size: int) -> float:
    """The blur (std in pixels of ``image_size`` px images) after D has seen ``images_seen``
    images: ``sigma`` (stated at 512 px) fading linearly to 0 at ``fade_kimg`` thousand."""
    if sigma <= 0 or fade_kimg <= 0:
        return 0.0
    return max(1.0 - images_seen / (fade_kimg * 1000.0), 0.0) * sigma * image_size / 512.0


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image [B, C, H, W]`` convolved with a normalised Gaussian of std ``sigma`` pixels,
    separably, over ``ceil(3 sigma)`` taps each side, borders replicated (a blur that pulled
    the border towards 0 would give D a frame to tell real from fake by); ``sigma <= 0``: the
    image itself."""
    if sigma <= 0:
        return image
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)
    taps = torch.exp(-x * x / (2 * sigma * sigma))
    taps = (taps / taps.sum()).to(image.dtype)
    c = image.shape[1]
    out = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(discriminator, image: torch.Tensor, image_raw: torch.Tensor,
               camera: torch.Tensor) -> torch.Tensor:
    """``mean |grad_x D(x)|^2`` over real images (both inputs of the dual discriminator);
    ``discriminator``: a :class:`DualDiscriminator` or any function of the same three inputs
    (the trainer's blurs the image first)."""
    image = image.detach().requires_grad_(True)
    image_raw = image_raw.detach().requires_grad_(True)
    logits = discriminator(image, image_raw, camera)
    g_img, g_raw = torch.autograd.grad(logits.sum(), [image, image_raw], create_graph=True)
    return (g_img.square().flatten(1).sum(1) + g_raw.square().flatten(1).sum(1)).mean()


def density_regularisation(model, triplane: torch.Tensor, points: int = 1000,
                           jitter: float = 0.004) -> torch.Tensor:
    """EG3D's density regulariser: ``|sigma(x) - sigma(x + eps)|`` at random points of the box."""
    from ..renderer import decode, sample_triplane

    renderer = model.renderer
    b = triplane.shape[0]
    box = renderer.settings.box_warp
    x = (torch.rand(b, points, 3, device=triplane.device) * 2 - 1) * (box / 2)
    xj = x + torch.randn_like(x) * jitter
    both = torch.cat([x, xj], 1)
    feats = sample_triplane(triplane, both, box, renderer.settings.plane_axes)
    sigma, _ = decode(feats, renderer.decoder.weights())
    sigma = sigma.reshape(b, 2, points)
    return (sigma[:, 0] - sigma[:, 1]).abs().mean()


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 in torchvision's numbering
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """VGG-16 feature distance (the LPIPS recipe without its learned linear heads): features at
    relu1_2, relu2_2, relu3_3 and relu4_3, each unit-normalised over channels, mean squared
    difference, summed. The weights are the user's: nothing is downloaded, so this loss exists
    only when :meth:`from_file` is given a safetensors file of torchvision's ``vgg16``
    ``features`` (keys ``features.N.weight`` / ``features.N.bias``, or without the prefix)."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path) -> "PerceptualLoss":
        from safetensors.torch import load_file

        from ..errors import UserError

        loss = cls()
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # not a file, not safetensors
            raise UserError(f"--perceptual {path} is not a readable safetensors file ({exc})"
                            ) from None
        tensors = {k.removeprefix("features."): v for k, v in tensors.items()}
        expected = loss.features.state_dict()
        for name, t in expected.items():
            if name not in tensors:
                raise UserError(f"--perceptual {path} lacks VGG-16 weight features.{name}; it "
                                "must hold torchvision's vgg16 'features' weights")
            if tuple(tensors[name].shape) != tuple(t.shape):
                raise UserError(f"--perceptual {path}: features.{name} has shape "
                                f"{tuple(tensors[name].shape)}, VGG-16 needs {tuple(t.shape)}")
        loss.features.load_state_dict({k: tensors[k] for k in expected})
        return loss.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean distance over the batch of images in [-1, 1]."""
        def taps(img):
            h = ((img.float() + 1) / 2 - self.mean) / self.std
            out = []
            for i, layer in enumerate(self.features):
                h = layer(h)
                if i in VGG16_TAPS:
                    out.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
            return out

        return sum((a - b).square().sum(1).mean() for a, b in zip(taps(x), taps(y)))
