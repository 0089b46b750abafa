"""CLeBS, Contrastive Learned Basis Scaling (paper-spec 3): expression ``[B, 64]`` -> ``[B, d]``.

The code is first divided by its per-channel spread when the config has one (tracking.md
4.4), then ``lambda = MLP(beta)`` ``[B, n]``; a learnable ``[d, n]`` matrix is orthonormalised
by QR at every forward, ``beta' = Q lambda``. Pre-trained contrastively against an image
encoder on frames of one video (negatives share appearance), then frozen;
:func:`contrastive_loss` is that objective.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CLeBS(nn.Module):
    def __init__(self, expr_dim: int, hidden: tuple[int, ...], basis: int, dim: int,
                 spread: tuple[float, ...] | None = None):
        super().__init__()
        # 1 / sigma_k, from the config (which the checkpoint carries), so not a saved weight;
        # empty: the code goes in as it is.
        inv = 1.0 / torch.tensor(spread, dtype=torch.float64) if spread else torch.empty(0)
        self.register_buffer("inv_spread", inv.float(), persistent=False)
        layers: list[nn.Module] = []
        width = expr_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, basis))
        self.mlp = nn.Sequential(*layers)
        self.basis_weight = nn.Parameter(torch.randn(dim, basis))
        # Filled by freeze_basis() for inference: QR once instead of every frame (a QR on CUDA
        # also synchronises with the host, which CUDA graphs cannot capture).
        self.register_buffer("frozen_basis", torch.empty(0), persistent=False)

    def freeze_basis(self) -> None:
        """Compute the basis once and reuse it until :meth:`unfreeze_basis` (inference)."""
        with torch.no_grad():
            self.frozen_basis = self._orthonormalise()

    def unfreeze_basis(self) -> None:
        self.frozen_basis = torch.empty(0, device=self.basis_weight.device)

    def basis(self) -> torch.Tensor:
        """Orthonormal basis ``Q [d, n]`` (columns), recomputed from the learnable matrix
        unless frozen.

        QR runs in float32 on the parameter's device; the column signs are fixed so that
        diag(R) >= 0, which makes Q a deterministic function of the parameter."""
        if self.frozen_basis.numel():
            return self.frozen_basis
        return self._orthonormalise()

    def _orthonormalise(self) -> torch.Tensor:
        q, r = torch.linalg.qr(self.basis_weight.float())
        signs = torch.sign(torch.diagonal(r))
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        return q * signs

    def coefficients(self, expr: torch.Tensor) -> torch.Tensor:
        if self.inv_spread.numel():
            expr = expr * self.inv_spread.to(expr.dtype)
        return self.mlp(expr)

    def forward(self, expr: torch.Tensor) -> torch.Tensor:
        return self.coefficients(expr) @ self.basis().t().to(expr.dtype)


def contrastive_loss(image_embed: torch.Tensor, expr_embed: torch.Tensor, temperature,
                     variant: str = "decoupled", symmetric: bool = False) -> torch.Tensor:
    """CLIP-style loss between K frames of one video and their expression codes.

    image_embed ``[K, d]`` = f_I(X_k), expr_embed ``[K, d]`` = f_e(beta_k); pair k is positive,
    the other frames of the same video are negatives. Cosine similarities over ``temperature``.
    ``variant="decoupled"`` excludes the positive from the denominator (the paper's form as
    transcribed): ``-mean_k log(exp(s_kk) / sum_{j != k} exp(s_jk))``; ``"infonce"`` includes it.
    ``symmetric`` averages the image->expression and expression->image directions."""
    if variant not in ("decoupled", "infonce"):
        raise ValueError(f"unknown CLeBS loss variant {variant!r}: use 'decoupled' or 'infonce'")
    if image_embed.shape[0] < 2:
        raise ValueError("the contrastive loss needs at least two frames of the same video")
    logits = F.normalize(image_embed, dim=-1) @ F.normalize(expr_embed, dim=-1).t() / temperature

    def one_direction(sim: torch.Tensor) -> torch.Tensor:
        # sim[j, k]: candidate j scored against anchor k; the positive is on the diagonal.
        positive = torch.diagonal(sim)
        if variant == "decoupled":
            eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
            sim = sim.masked_fill(eye, float("-inf"))
        return (torch.logsumexp(sim, dim=0) - positive).mean()

    loss = one_direction(logits)
    if symmetric:
        loss = 0.5 * (loss + one_direction(logits.t()))
    return loss
