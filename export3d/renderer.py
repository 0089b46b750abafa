"""Tri-plane volume renderer: the pure-PyTorch reference, which is the specification.

In: tri-plane ``[B, 3, C, P, P]``, decoder weights, rays ``[B, R, 3]`` (origins, unit directions).
Out: composited features ``[B, R, F]`` (first 3 = raw RGB in [-1, 1]), depth ``[B, R]``,
accumulated opacity ``[B, R]``. :class:`TriplaneRenderer` wraps it for cameras and images.

The fused kernel (``engines.raymarch``) implements exactly :func:`raymarch_reference`; the tests
compare the two. ``raymarch(..., impl=)`` chooses: ``"reference"``, ``"kernel"`` or ``"auto"``
(the kernel for CUDA tensors when ``engines`` can provide it, else the reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Plane coordinate pairs: plane k samples the point's normalised coordinates (p[a], p[b]) as
# grid_sample's (x = width, y = height). True XY / XZ / YZ planes by default; EG3D's code
# samples its third plane at (z, x), a transposed copy of the XZ plane (eg3d PR #88).
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
PLANE_AXES_EG3D = ((0, 1), (0, 2), (2, 0))

FEATURE_CLAMP = 0.001  # EG3D OSGDecoder: sigmoid(x) * (1 + 2 * 0.001) - 0.001
PDF_WEIGHT_FLOOR = 0.01  # added to the smoothed coarse weights before the inverse CDF (EG3D)
PDF_DENOM_EPS = 1e-5  # an inverse-CDF interval narrower than this in cdf is treated as width 1


@dataclass(frozen=True)
class RayMarchSettings:
    near: float
    far: float
    samples_coarse: int
    samples_fine: int
    box_warp: float = 1.0
    eg3d_plane_axes: bool = False

    @property
    def plane_axes(self):
        return PLANE_AXES_EG3D if self.eg3d_plane_axes else PLANE_AXES


@dataclass(frozen=True)
class Decoder:
    """OSG decoder weights in math layout: ``h = softplus(x @ w1 + b1)``, ``y = h @ w2 + b2``.
    w1 ``[C, Hd]``, b1 ``[Hd]``, w2 ``[Hd, 1 + F]``, b2 ``[1 + F]``; y[0] is raw density."""
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


def sample_triplane(triplane: torch.Tensor, points: torch.Tensor, box_warp: float,
                    plane_axes=PLANE_AXES) -> torch.Tensor:
    """Mean of the three planes' bilinear features at ``points [B, N, 3]`` -> ``[B, N, C]``.

    Points are normalised by ``2 / box_warp`` (the cube [-box_warp/2, box_warp/2]^3 maps to
    [-1, 1]^3) and sampled with ``grid_sample(bilinear, zeros padding, align_corners=False)``:
    texel centres at ((g + 1) P - 1) / 2, taps outside the plane read 0."""
    b, n, _ = points.shape
    coords = points * (2.0 / box_warp)
    total = 0.0
    for k, (a0, a1) in enumerate(plane_axes):
        grid = torch.stack([coords[..., a0], coords[..., a1]], dim=-1).unsqueeze(1)  # [B,1,N,2]
        plane = triplane[:, k].float()  # [B, C, P, P]
        feats = F.grid_sample(plane, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # [B, C, 1, N]
        total = total + feats
    return (total / 3.0).squeeze(2).transpose(1, 2)


def decode(features: torch.Tensor, decoder: Decoder) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., C]`` -> (raw density ``[...]``, features ``[..., F]`` in (-0.001, 1.001))."""
    hidden = F.softplus(features @ decoder.w1.float() + decoder.b1.float())
    out = hidden @ decoder.w2.float() + decoder.b2.float()
    feats = torch.sigmoid(out[..., 1:]) * (1 + 2 * FEATURE_CLAMP) - FEATURE_CLAMP
    return out[..., 0], feats


# The kernel's half-precision path as reference options (its launch options of the same names):
# dot_precision "ieee" (the default: every product in fp32) or "fp16" (the decoder's two
# products take fp16 operands with fp32 accumulation, as its tensor cores do); tap_sum "fp16"
# (the default, with "fp16" products on a half-precision tri-plane: the twelve weighted taps
# summed in fp16) or "fp32". Everything else stays fp32, as in the kernel.
DOT_PRECISIONS = ("ieee", "fp16")
TAP_SUMS = ("fp16", "fp32")


def sample_triplane_taps(triplane: torch.Tensor, points: torch.Tensor, box_warp: float,
                         plane_axes=PLANE_AXES, dtype=torch.float32) -> torch.Tensor:
    """The SUM of the three planes' bilinear features at ``points [B, N, 3]`` -> ``[B, N, C]``
    in ``dtype``, tap by tap in the kernel's order: per plane (x, y) = (0, 0), (1, 0), (0, 1),
    (1, 1), each tap's value times its weight (the two axis weights' product, in fp32, then
    rounded to ``dtype``) added to the running sum, every product and sum rounded to
    ``dtype``. Pixel coordinates are grid_sample's (align_corners=False): the first tap is
    i0 = clamp(floor(pixel), 0, P - 2) and each weight max(0, 1 - |pixel - i|), so a tap the
    sample does not touch (zero padding) weighs 0. In fp32 it is 3x :func:`sample_triplane`
    up to rounding (a test keeps them within 5e-6, a few ulps); a half tri-plane is read as
    fp16, which holds every bf16 value of fp16's range exactly, as the kernel's op hands it
    over."""
    b, n, _ = points.shape
    planes = triplane.to(torch.float16 if dtype == torch.float16 else torch.float32)
    p = planes.shape[-1]
    channels = planes.shape[2]
    pixel = ((points.float() * (2.0 / box_warp) + 1.0) * p - 1.0) * 0.5  # [B, N, 3]
    i0 = torch.clamp(torch.floor(pixel), 0.0, p - 2.0)
    frac = pixel - i0
    weights = (torch.clamp(1.0 - frac.abs(), min=0.0), torch.clamp(1.0 - (frac - 1.0).abs(),
                                                                    min=0.0))
    i0 = i0.long()
    total = torch.zeros(b, n, channels, dtype=dtype, device=points.device)
    for k, (ax, ay) in enumerate(plane_axes):
        flat = planes[:, k].flatten(2).transpose(1, 2)  # [B, P * P, C], row y, column x
        for dy in (0, 1):
            for dx in (0, 1):
                index = (i0[..., ay] + dy) * p + (i0[..., ax] + dx)  # [B, N]
                value = torch.gather(flat, 1, index.unsqueeze(-1).expand(-1, -1, channels))
                weight = (weights[dx][..., ax] * weights[dy][..., ay]).to(dtype)
                total = total + value.to(dtype) * weight.unsqueeze(-1)
    return total


def decode_fp16_products(summed: torch.Tensor, decoder: Decoder
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode` with the kernel's fp16 products, from the planes' SUM ``[..., C]`` (the
    mean's 1/3 folded into w1, then w1 rounded to fp16): the summed taps and w1 / 3 rounded to
    fp16 for the first product, the hidden units and w2's feature columns for the second,
    both accumulated in fp32 (products of fp16 values are exact in fp32); biases, softplus,
    the density column and the sigmoid in fp32."""
    w1 = (decoder.w1.float() * (1.0 / 3.0)).to(torch.float16).float()
    hidden = F.softplus(summed.to(torch.float16).float() @ w1 + decoder.b1.float())
    w2 = decoder.w2.float()
    b2 = decoder.b2.float()
    sigma = hidden @ w2[:, 0] + b2[0]
    out = hidden.to(torch.float16).float() @ w2[:, 1:].to(torch.float16).float() + b2[1:]
    feats = torch.sigmoid(out) * (1 + 2 * FEATURE_CLAMP) - FEATURE_CLAMP
    return sigma, feats


def composite(depths: torch.Tensor, sigma: torch.Tensor, feats: torch.Tensor):
    """Midpoint compositing of sorted samples (EG3D MipRayMarcher2).

    depths, sigma ``[B, R, S]``, feats ``[B, R, S, F]`` -> features ``[B, R, F]`` (x2 - 1),
    depth ``[B, R]``, opacity ``[B, R]``, interval weights ``[B, R, S - 1]``.
    For interval i = [t_i, t_{i+1}]: delta_i = t_{i+1} - t_i, sigma and features are the means
    of the two end samples, density = softplus(sigma_mid - 1), alpha_i = 1 - exp(-density delta_i)
    (:func:`alpha_of`),
    T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} density_j delta_j) (exclusive; computed as
    the exponential of a cumulative sum, which exports to standard ONNX ops, unlike cumprod;
    EG3D's 1e-10 term is dropped), w_i = alpha_i T_i.
    depth = sum(w t_mid) / sum(w); where sum(w) == 0 it is the last sample's depth; then clamped
    to [t_0, t_{S-1}]."""
    deltas = depths[..., 1:] - depths[..., :-1]
    sigma_mid = 0.5 * (sigma[..., 1:] + sigma[..., :-1])
    feats_mid = 0.5 * (feats[..., 1:, :] + feats[..., :-1, :])
    depth_mid = 0.5 * (depths[..., 1:] + depths[..., :-1])
    optical = F.softplus(sigma_mid - 1.0) * deltas  # density * delta per interval
    alpha = alpha_of(optical)
    ones = torch.ones_like(alpha[..., :1])
    transmittance = torch.exp(-(torch.cumsum(optical, dim=-1) - optical))  # exclusive sum
    weights = alpha * transmittance
    opacity = weights.sum(-1)
    features = (weights.unsqueeze(-1) * feats_mid).sum(-2) * 2.0 - 1.0
    depth_sum = (weights * depth_mid).sum(-1)
    depth = torch.where(opacity > 0, depth_sum / torch.where(opacity > 0, opacity, ones[..., 0]),
                        depths[..., -1])
    depth = torch.minimum(torch.maximum(depth, depths[..., 0]), depths[..., -1])
    return features, depth, opacity, weights


# Below this optical thickness alpha is the series of 1 - exp(-x) (alpha_of); the kernel's
# compositing uses the same split.
ALPHA_SERIES_BELOW = 0.0625


def alpha_of(optical: torch.Tensor) -> torch.Tensor:
    """1 - exp(-x) for x >= 0, accurate where x is tiny: in fp32, 1 - exp(-x) cancels (x = 1e-6
    keeps one digit), and a nearly transparent ray's depth is a weighted mean of such alphas.
    Below 1/16 the series x - x^2/2 + x^3/6 - x^4/24 (relative error under x^4/120, 1.3e-7);
    above, 1 - exp(-x). Written with standard ops: ONNX has no Expm1."""
    series = optical * (1.0 - optical * (0.5 - optical * (1.0 / 6.0 - optical / 24.0)))
    return torch.where(optical < ALPHA_SERIES_BELOW, series, 1.0 - torch.exp(-optical))


def smooth_weights(weights: torch.Tensor) -> torch.Tensor:
    """EG3D's smoothing of coarse interval weights ``[..., S-1]``: max over each pair of
    neighbours (zero-padded), then the mean of neighbouring maxima, then + 0.01:
    ``w'_i = (max(w_{i-1}, w_i) + max(w_i, w_{i+1})) / 2 + 0.01`` with w_{-1} = w_{S-1} = 0."""
    padded = F.pad(weights, (1, 1))
    maxed = torch.maximum(padded[..., :-1], padded[..., 1:])  # [..., S]
    return 0.5 * (maxed[..., :-1] + maxed[..., 1:]) + PDF_WEIGHT_FLOOR


def inverse_cdf(edges: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, written with compare-and-sum (no ``searchsorted``) so it exports to
    standard ONNX ops. edges ``[..., S]`` (sorted), weights ``[..., S-1]`` (> 0), u ``[..., K]``
    increasing in [0, 1) -> depths ``[..., K]``, sorted.
    cdf = [0, cumsum(w / sum w)]; interval i = (number of cdf entries <= u) - 1, clamped to
    [0, S-2]; t = e_i + (u - cdf_i) / (cdf_{i+1} - cdf_i) (e_{i+1} - e_i), where a cdf step below
    1e-5 counts as 1."""
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], dim=-1)  # [..., S]
    below = (cdf.unsqueeze(-2) <= u.unsqueeze(-1)).sum(-1) - 1  # [..., K]
    idx = below.clamp(0, edges.shape[-1] - 2)
    cdf_lo = torch.gather(cdf, -1, idx)
    cdf_hi = torch.gather(cdf, -1, idx + 1)
    e_lo = torch.gather(edges, -1, idx)
    e_hi = torch.gather(edges, -1, idx + 1)
    denom = cdf_hi - cdf_lo
    denom = torch.where(denom < PDF_DENOM_EPS, torch.ones_like(denom), denom)
    return e_lo + (u - cdf_lo) / denom * (e_hi - e_lo)


def coarse_depths(shape, settings: RayMarchSettings, device, jitter: bool) -> torch.Tensor:
    """Coarse depths ``[*shape, Sc]``: bin centres near + (i + 0.5) d with d = (far - near)/Sc;
    in training (``jitter``) the offset 0.5 becomes uniform in [0, 1) per sample."""
    n = settings.samples_coarse
    step = (settings.far - settings.near) / n
    offset = torch.rand(*shape, n, device=device) if jitter else torch.full((*shape, n), 0.5,
                                                                           device=device)
    return settings.near + (torch.arange(n, device=device, dtype=torch.float32) + offset) * step


def fine_u(shape, n: int, device, jitter: bool) -> torch.Tensor:
    """Inverse-CDF positions ``[*shape, n]``: (j + 0.5) / n at inference, stratified uniform
    (j + U[0, 1)) / n in training; increasing in both cases, so the fine samples come sorted."""
    offset = torch.rand(*shape, n, device=device) if jitter else torch.full((*shape, n), 0.5,
                                                                           device=device)
    return (torch.arange(n, device=device, dtype=torch.float32) + offset) / n


def raymarch_reference(triplane: torch.Tensor, decoder: Decoder, origins: torch.Tensor,
                       directions: torch.Tensor, settings: RayMarchSettings,
                       jitter: bool = False, dot_precision: str = "ieee",
                       tap_sum: str = "fp16"):
    """Render rays through a tri-plane with EG3D semantics. The specification of the kernel.

    Shapes: triplane ``[B, 3, C, P, P]`` (fp32, fp16 or bf16; all arithmetic is fp32 unless
    ``dot_precision="fp16"``: the kernel's half-precision products, :data:`DOT_PRECISIONS`,
    with its tap sums, ``tap_sum``, in fp16 for a half tri-plane),
    origins / directions ``[B, R, 3]`` fp32 (directions unit length), decoder as :class:`Decoder`.
    Returns fp32 (features ``[B, R, F]``, depth ``[B, R]``, opacity ``[B, R]``).

    1. Coarse pass: Sc depths at bin centres of [near, far] (:func:`coarse_depths`); points
       o + t d; features = mean of the three planes (:func:`sample_triplane`); decoder MLP
       (:func:`decode`); composite (:func:`composite`) -> interval weights [Sc - 1].
    2. Importance pass: smooth the coarse weights (:func:`smooth_weights`), build the PDF over
       the Sc - 1 intervals whose edges are the coarse depths, draw Sf depths at the fixed grid
       u_j = (j + 0.5) / Sf (:func:`inverse_cdf`), decode them. No gradient flows into the
       importance depths.
    3. Merge: concatenate coarse then fine samples and sort by depth (stable), Sc + Sf samples.
    4. Final composite of the merged samples -> features x2 - 1, depth, opacity.
    With ``jitter`` (training) the coarse bins and the u grid are stratified-random instead.
    """
    device_type = origins.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        # Mixed-precision training (bf16 autocast around the model) keeps the renderer in
        # fp32 (paper-spec 6.3): autocast would run the decoder's products in bf16 whatever
        # its inputs' dtype, moving the raw density by ~2e-2.
        with torch.autocast(device_type, enabled=False):
            return raymarch_reference(triplane, decoder, origins, directions, settings, jitter,
                                      dot_precision, tap_sum)
    if dot_precision not in DOT_PRECISIONS:
        raise ValueError(f"dot_precision must be one of {', '.join(DOT_PRECISIONS)}, got "
                         f"{dot_precision!r}")
    if tap_sum not in TAP_SUMS:
        raise ValueError(f"tap_sum must be one of {', '.join(TAP_SUMS)}, got {tap_sum!r}")
    b, r, _ = origins.shape
    origins = origins.float()
    directions = directions.float()
    half_taps = (dot_precision == "fp16" and tap_sum == "fp16"
                 and triplane.dtype in (torch.float16, torch.bfloat16))

    def query(depths):  # [B, R, S] -> sigma [B, R, S], feats [B, R, S, F]
        points = origins.unsqueeze(2) + depths.unsqueeze(-1) * directions.unsqueeze(2)
        if dot_precision == "fp16":
            summed = sample_triplane_taps(
                triplane, points.reshape(b, -1, 3), settings.box_warp, settings.plane_axes,
                torch.float16 if half_taps else torch.float32)
            sigma, out = decode_fp16_products(summed, decoder)
        else:
            feats = sample_triplane(triplane, points.reshape(b, -1, 3), settings.box_warp,
                                    settings.plane_axes)
            sigma, out = decode(feats, decoder)
        return sigma.reshape(b, r, -1), out.reshape(b, r, depths.shape[-1], -1)

    t_coarse = coarse_depths((b, r), settings, origins.device, jitter)
    sigma_coarse, feats_coarse = query(t_coarse)
    if settings.samples_fine == 0:
        features, depth, opacity, _ = composite(t_coarse, sigma_coarse, feats_coarse)
        return features, depth, opacity
    _, _, _, weights = composite(t_coarse, sigma_coarse, feats_coarse)
    with torch.no_grad():
        u = fine_u((b, r), settings.samples_fine, origins.device, jitter)
        t_fine = inverse_cdf(t_coarse, smooth_weights(weights.detach()), u)
    sigma_fine, feats_fine = query(t_fine)

    t_all = torch.cat([t_coarse, t_fine], dim=-1)
    order = torch.sort(t_all, dim=-1, stable=True).indices
    t_all = torch.gather(t_all, -1, order)
    sigma_all = torch.gather(torch.cat([sigma_coarse, sigma_fine], -1), -1, order)
    feats_all = torch.cat([feats_coarse, feats_fine], -2)
    feats_all = torch.gather(feats_all, -2, order.unsqueeze(-1).expand_as(feats_all))
    features, depth, opacity, _ = composite(t_all, sigma_all, feats_all)
    return features, depth, opacity


IMPLS = ("auto", "reference", "kernel")


def raymarch(triplane, decoder: Decoder, origins, directions, settings: RayMarchSettings,
             jitter: bool = False, impl: str = "auto"):
    """One entry point: ``impl="reference"`` (this module), ``"kernel"`` (the fused Triton op in
    ``engines.raymarch``; inference only, CUDA tensors), ``"auto"`` (the kernel for CUDA
    tensors at inference when it is available, else the reference)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown renderer impl {impl!r}; choose one of: {', '.join(IMPLS)}")
    use_kernel = impl == "kernel" or (
        impl == "auto" and triplane.is_cuda and not jitter and not torch.is_grad_enabled()
        and _kernel_available())
    if not use_kernel:
        return raymarch_reference(triplane, decoder, origins, directions, settings, jitter)
    if jitter:
        raise ValueError("the fused kernel renders at inference only (jitter=False)")
    weights = (triplane, decoder.w1, decoder.b1, decoder.w2, decoder.b2)
    if torch.is_grad_enabled() and any(t.requires_grad for t in weights):
        # Caught here, not at backward(), which has no formula for the op.
        raise ValueError("the fused kernel renders at inference only: call it under "
                         "torch.no_grad() / torch.inference_mode(), or use impl='reference' "
                         "to train")
    from engines import raymarch as kernel  # lazy: export3d reaches engines only here

    return kernel.raymarch(
        triplane, decoder.w1, decoder.b1, decoder.w2, decoder.b2, origins, directions,
        near=settings.near, far=settings.far, samples_coarse=settings.samples_coarse,
        samples_fine=settings.samples_fine, box_warp=settings.box_warp,
        plane_axes=settings.plane_axes)


def _kernel_available() -> bool:
    try:
        from engines import raymarch as kernel
    except ImportError:
        return False
    return kernel.available()


def kernel_interpreted() -> bool:
    """Whether Triton's interpreter runs the fused kernel on CPU tensors (the tests set it), as
    the op decides; False where ``engines`` cannot be imported."""
    try:
        from engines.raymarch.op import interpreter_enabled
    except ImportError:
        return False
    return interpreter_enabled()


class OSGDecoder(torch.nn.Module):
    """EG3D's decoder MLP: C -> hidden (softplus) -> 1 + C. Holds nn.Linear weights and hands
    them to the renderer in math layout (:class:`Decoder`)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(channels, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1 + channels)

    def weights(self) -> Decoder:
        return Decoder(self.fc1.weight.t(), self.fc1.bias, self.fc2.weight.t(), self.fc2.bias)

    def forward(self, features: torch.Tensor):
        return decode(features, self.weights())


class TriplaneRenderer(torch.nn.Module):
    """Tri-plane + camera label -> feature image ``[B, F, r, r]``, depth ``[B, 1, r, r]``,
    opacity ``[B, 1, r, r]``, with r the neural render resolution."""

    def __init__(self, config, impl: str = "auto"):
        super().__init__()
        self.resolution = config.render_size
        self.settings = RayMarchSettings(
            near=config.ray_near, far=config.ray_far, samples_coarse=config.samples_coarse,
            samples_fine=config.samples_fine, box_warp=config.box_warp,
            eg3d_plane_axes=config.eg3d_plane_axes)
        self.decoder = OSGDecoder(config.triplane_channels, config.decoder_hidden)
        self.impl = impl

    def forward(self, triplane: torch.Tensor, camera: torch.Tensor, impl: str | None = None):
        from .camera import rays

        b = triplane.shape[0]
        res = self.resolution
        origins, directions = rays(camera.float(), res)
        features, depth, opacity = raymarch(
            triplane, self.decoder.weights(), origins, directions, self.settings,
            jitter=self.training, impl=impl or self.impl)
        # Features go on in the tri-plane's dtype (the SR runs in the model's precision);
        # depth and opacity stay fp32.
        image = features.transpose(1, 2).reshape(b, -1, res, res).to(triplane.dtype)
        return image, depth.reshape(b, 1, res, res), opacity.reshape(b, 1, res, res)
