"""CLeBS pre-training (paper-spec 3.3): the expression encoder against an image encoder.

A batch is ``K`` frames of ONE clip (one identity, one background), so the only thing that
tells them apart is the expression: the image encoder embeds each crop, CLeBS embeds each
frame's expression code, and the contrastive loss (:func:`export3d.clebs.contrastive_loss`,
variant and temperature from the model config; the temperature is learned in log space)
pulls each pair together against the other frames. The image encoder is a small residual CNN
trained alongside and then dropped; CLeBS's basis is frozen into the checkpoint written at
the end (a full model checkpoint whose other weights are still their initial values, with
``stage = clebs`` in its metadata), which ``export3d train generator --init`` takes.

Before the encoder is dropped it scores what was learnt on frames never trained on
(:func:`heldout_retrieval`): for each held-out frame of a clip, the rank of its own crop among
the clip's held-out crops when they are ordered by cosine similarity to its expression
embedding (0 = its own crop comes first; chance is (n - 1) / 2).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..clebs import contrastive_loss
from ..config import ModelConfig
from ..errors import UserError
from ..model import build_model
from .data import Dataset, to_tensor


class ImageEncoder(nn.Module):
    """Aligned crop ``[B, 3, S, S]`` -> embedding ``[B, d]`` (four stride-2 conv stages, global
    average pool, linear projection)."""

    def __init__(self, dim: int, width: int = 32):
        super().__init__()
        chans = (3, width, 2 * width, 4 * width, 4 * width)
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout),
                       nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(chans[-1], dim)

    def forward(self, x):
        return self.project(self.features(x).mean((2, 3)))


def retrieval_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """``similarity [n codes, n crops]``, pair k on the diagonal -> for each code, how many
    crops score strictly higher than its own (0: retrieved first)."""
    own = torch.diagonal(similarity)
    return (similarity > own[:, None]).sum(1)


@torch.no_grad()
def heldout_retrieval(encoder: nn.Module, clebs: nn.Module, dataset: Dataset,
                      device: str = "cpu", chunk: int = 64) -> dict:
    """Per clip with at least two held-out frames, and over all of them: ``frames``, ``top1``
    (fraction retrieved first), ``mean_rank`` and ``chance_mean_rank`` ((n - 1) / 2 for a clip
    of n held-out frames, frame-weighted over clips)."""
    import torch.nn.functional as F

    clips, ranks, chance = {}, [], []
    for clip in dataset.clips:
        pos = np.concatenate([dataset.positions(clip, "interp"),
                              dataset.positions(clip, "extrap")])
        if len(pos) < 2:
            continue
        crops = torch.cat([encoder(to_tensor([clip.image(k) for k in pos[i:i + chunk]])
                                   .to(device)) for i in range(0, len(pos), chunk)])
        codes = clebs(torch.from_numpy(clip.expr[pos]).to(device))
        r = retrieval_ranks(F.normalize(codes, dim=-1) @ F.normalize(crops, dim=-1).t())
        r = r.cpu().double()
        clips[clip.name] = {"frames": len(pos), "top1": float((r == 0).double().mean()),
                            "mean_rank": float(r.mean()), "chance_mean_rank": (len(pos) - 1) / 2}
        ranks.append(r)
        chance += [(len(pos) - 1) / 2] * len(pos)
    if not ranks:
        return {"frames": 0, "clips": {}}
    every = torch.cat(ranks)
    return {"frames": len(every), "top1": float((every == 0).double().mean()),
            "mean_rank": float(every.mean()), "chance_mean_rank": float(np.mean(chance)),
            "clips": clips}


def train_clebs(model_config: ModelConfig, dataset: Dataset, out, steps: int = 400,
                frames: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                progress: bool = True, log=print, unit_spread: bool = False) -> dict:
    """Pre-train CLeBS; writes ``out`` (safetensors) and returns the loss history.

    The expression code is standardised by the dataset's spread (tracking.md 4.4), which the
    checkpoint's config carries on to ``train generator --init`` and to inference, unless
    ``unit_spread`` (the code as it is: how demo64 was trained) or the config has one already."""
    from tqdm import tqdm

    clips = [c for c in dataset.clips if len(dataset.positions(c, "train")) >= 2]
    if not clips:
        raise UserError("the dataset has no clip with two training frames")
    if model_config.expr_spread is None and not unit_spread:
        model_config = model_config.replace(expr_spread=dataset.expression_spread())
    torch.manual_seed(seed)
    model = build_model(model_config, seed=seed).to(device)
    clebs = model.clebs.train()
    clebs.unfreeze_basis()
    encoder = ImageEncoder(model_config.clebs_dim).to(device)
    log_temp = nn.Parameter(torch.tensor(math.log(model_config.clebs_temperature), device=device))
    opt = torch.optim.Adam(list(clebs.parameters()) + list(encoder.parameters()) + [log_temp],
                           lr=lr)
    weights = np.array([len(dataset.positions(c, "train")) for c in clips], np.float64)
    history = []
    for step in tqdm(range(steps), desc="clebs", unit="step", disable=not progress,
                     dynamic_ncols=True):
        rng = np.random.default_rng([seed, step])
        clip = clips[rng.choice(len(clips), p=weights / weights.sum())]
        pos = dataset.positions(clip, "train")
        pick = rng.choice(pos, size=min(frames, len(pos)), replace=False)
        images = to_tensor([clip.image(k) for k in pick]).to(device)
        expr = torch.from_numpy(clip.expr[pick]).to(device)
        # light photometric jitter: expression, not exposure, must identify the frame
        gain = 1 + 0.1 * torch.from_numpy(rng.standard_normal((len(pick), 1, 1, 1))).float()
        images = (images * gain.to(device)).clamp(-1, 1)
        loss = contrastive_loss(encoder(images), clebs(expr), log_temp.exp(),
                                variant=model_config.clebs_loss)
        if not math.isfinite(float(loss.detach())):
            raise UserError(f"CLeBS training diverged at step {step}: the contrastive loss is "
                            f"{float(loss.detach())} (clip {clip.name}); nothing was written")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            log_temp.clamp_(math.log(0.01), math.log(1.0))
        history.append(float(loss.detach()))
    clebs.eval()
    clebs.freeze_basis()
    model.eval()
    heldout = heldout_retrieval(encoder.eval(), clebs, dataset, device)
    path = save_checkpoint(model, out, extra={"stage": "clebs", "clebs_steps": str(steps),
                                              "dataset": str(dataset.root),
                                              "clebs_heldout": json.dumps(heldout)})
    first = float(np.mean(history[: max(1, steps // 10)]))
    final = float(np.mean(history[-max(1, steps // 10):]))
    temperature = float(log_temp.detach().exp())
    spread = model_config.expr_spread
    log(f"wrote {path}: contrastive loss {first:.3f} -> {final:.3f} "
        f"(temperature {temperature:.3f}; expression code "
        + (f"standardised, channel spreads {min(spread):.3g} to {max(spread):.3g})" if spread
           else "as extracted, not standardised)"))
    if heldout["frames"]:
        log(f"held-out frames matched to their own crop among their clip's: top-1 "
            f"{heldout['top1']:.2f}, mean rank {heldout['mean_rank']:.1f} (chance "
            f"{heldout['chance_mean_rank']:.1f}) over {heldout['frames']} frames of "
            f"{len(heldout['clips'])} clip(s)")
    return {"history": history, "first": first, "final": final,
            "temperature": temperature, "path": str(Path(path)), "expr_spread": spread,
            "heldout": heldout}

