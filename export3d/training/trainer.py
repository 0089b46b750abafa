"""Generator training by self-reenactment (paper-spec 6.1-6.3).

Per step: for each batch element a clip, then a source frame S and a driving frame D of that
clip (training positions only); ``out = model(S, expr_D, camera_D)`` with the renderer jittered;
loss = L1 + (1 - MS-SSIM) on the final image and on the raw render (:mod:`.losses`), a VGG
feature distance when the user gives VGG-16 weights (``--perceptual``; none can be downloaded
here), plus,
after ``adv_start`` steps, the dual discriminator's non-saturating loss (weight
``adv_weight``), with a lazy R1 penalty on real images every ``r1_every`` steps and the
density regulariser every ``density_every`` steps (both weighted by their interval, lazy
regularisation as in StyleGAN2 and EG3D). D is shown the final images blurred, the
blur fading out over its first ``d_blur_fade_kimg`` thousand images (EG3D; ``d_blur_sigma``).
An EMA copy of the weights is kept and is what the checkpoints hold. CLeBS comes from
``export3d train clebs`` and stays frozen (paper), unless none is given, when it trains jointly
(the paper's "E2E LeBS" ablation).

Determinism and exact resume: everything random in step ``k`` (which frames, the renderer's
jitter, the density points) is drawn from generators seeded by ``(seed, k, rank)``, and the
state file holds the weights, EMA, optimisers and step. So a run resumed from step ``k``
computes exactly the losses the uninterrupted run computed.

Files in ``--out``: ``state.safetensors`` (resume: weights, EMA, optimisers and step, never
unpickled; :mod:`.state`),
``model.safetensors`` (the EMA model, a normal checkpoint), ``log.jsonl``, ``tb/``
(TensorBoard), ``samples/step_XXXXXX.png`` (rows: source | driving | output | raw | depth).

More than one process: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank draws its own
batch; the generator runs inside ``DistributedDataParallel`` (NCCL on CUDA, Gloo on CPU), the
discriminator's gradients and the tri-plane EMA buffer are averaged with ``all_reduce``; weights
start equal (same seed, then a broadcast from rank 0), so they stay equal, which
:meth:`Trainer.check_replicas` verifies at the end. Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, read_config, save_checkpoint
from ..config import ModelConfig
from ..errors import UserError
from ..model import Export3D
from .data import Dataset, to_tensor
from .losses import (DualDiscriminator, PerceptualLoss, d_blur_sigma, density_regularisation,
                     discriminator_loss, gaussian_blur, generator_adv_loss, r1_penalty,
                     reconstruction_loss)
from .state import load_state, save_state


@dataclass
class TrainConfig:
    steps: int = 10000
    batch: int = 8
    lr: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.99)
    ssim_weight: float = 1.0
    perceptual_weight: float = 1.0  # only with --perceptual VGG weights
    adv_weight: float = 0.05
    adv_start: int = 4000  # warm-up without the adversarial term
    r1_gamma: float = 1.0
    r1_every: int = 16
    d_blur_sigma: float = 10.0  # px at 512 px (scaled to the image size); 0: no blur
    d_blur_fade_kimg: float = 200.0  # images D sees (all processes) until the blur is gone
    density_weight: float = 0.25  # per step on average: x density_every on the steps it runs
    density_every: int = 4
    ema_decay: float = 0.999
    ema_warmup: int = 500  # plain average over the first steps (decay ramps up)
    log_every: int = 25
    sample_every: int = 500
    save_every: int = 250
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    time_limit_min: float = 0.0  # > 0: save and stop after this many minutes
    holdout_every: int = 10
    holdout_tail: float = 0.15

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Distributed:
    """Rank, world size and the gradient all-reduce; world size 1 when not under torchrun."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.device = device
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.dist = dist
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, module: torch.nn.Module) -> None:
        if self.world > 1:
            for t in list(module.parameters()) + list(module.buffers()):
                self.dist.broadcast(t.data, 0)

    def average_gradients(self, module: torch.nn.Module) -> None:
        if self.world == 1:
            return
        for p in module.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self.dist.all_reduce(p.grad)
                p.grad /= self.world

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Floating-point buffers updated from each rank's own batch (the tri-plane EMA) are
        averaged too, so replicas stay identical."""
        if self.world == 1:
            return
        for b in module.buffers():
            if b.is_floating_point() and b.numel():
                self.dist.all_reduce(b)
                b /= self.world

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over the ranks: a decision every rank must take together (stop at
        this step) even where one rank saw the cause (its clock, its loss, its signal)."""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        self.dist.all_reduce(t)
        return float(t.item()) / self.world

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def close(self) -> None:
        """Leave the process group once every rank is here: a rank tearing its connections
        down while a peer still talks to it can abort that peer (gloo: "terminate called
        without an active exception")."""
        if self.world > 1 and self.dist.is_initialized():
            self.dist.barrier()
            self.dist.destroy_process_group()


def step_rng(seed: int, step: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + rank)
    return np.random.default_rng([seed, step, rank]), g


def draw_pairs(dataset: Dataset, batch: int, rng: np.random.Generator) -> list[tuple]:
    """``batch`` (clip, source position, driving position) from the training positions,
    clips weighted by their number of training frames."""
    pools = [(c, dataset.positions(c, "train")) for c in dataset.clips]
    pools = [(c, p) for c, p in pools if len(p) >= 2]
    if not pools:
        raise UserError("the dataset has no clip with two training frames")
    weights = np.array([len(p) for _, p in pools], np.float64)
    picks = rng.choice(len(pools), size=batch, p=weights / weights.sum())
    pairs = []
    for k in picks:
        clip, pos = pools[k]
        s, d = rng.choice(pos, size=2, replace=False)
        pairs.append((clip, int(s), int(d)))
    return pairs


def load_batch(pairs, device) -> dict[str, torch.Tensor]:
    src = to_tensor([c.image(s) for c, s, _ in pairs]).to(device)
    drv = to_tensor([c.image(d) for c, _, d in pairs]).to(device)
    expr = torch.from_numpy(np.stack([c.expr[d] for c, _, d in pairs])).to(device)
    camera = torch.from_numpy(np.stack([c.camera[d] for c, _, d in pairs])).to(device)
    return {"source": src, "driving": drv, "expr": expr, "camera": camera}


class Trainer:
    def __init__(self, model_config: ModelConfig, dataset: Dataset, out, config: TrainConfig,
                 device: str = "cpu", init: str | None = None, progress: bool = True,
                 perceptual: str | None = None, unit_spread: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # under torchrun each process takes the GPU of its local rank
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.dist = Distributed(self.device)
        self.cfg, self.dataset, self.out = config, dataset, Path(out)
        self.progress = progress and self.dist.main
        # The expression code's spread (tracking.md 4.4) belongs to CLeBS: --init's, else this
        # dataset's (or none: --unit-spread). Only the config is read here, so the random
        # initial weights below are those of a run without it.
        if init is not None:
            if unit_spread:
                raise UserError("--unit-spread cannot go with --init: the expression code's "
                                f"spread is the one {init} was trained with")
            model_config = model_config.replace(expr_spread=read_config(init)[0].expr_spread)
        elif not unit_spread:
            model_config = model_config.replace(expr_spread=dataset.expression_spread())
        torch.manual_seed(config.seed)
        self.model = Export3D(model_config, render_impl="reference").to(self.device)
        self.clebs_frozen = False
        if init is not None:
            pretrained = load_checkpoint(init, render_impl="reference")
            if pretrained.config != model_config:
                raise UserError(f"{init} is for preset {pretrained.config.preset!r}, not "
                                f"{model_config.preset!r}; pass a matching --init")
            self.model.clebs.load_state_dict(pretrained.clebs.state_dict())
            self.clebs_frozen = True
            for p in self.model.clebs.parameters():
                p.requires_grad_(False)
        self.disc = DualDiscriminator(model_config.image_size).to(self.device)
        self.perceptual = PerceptualLoss.from_file(perceptual).to(self.device) \
            if perceptual else None
        self.dist.broadcast(self.model)
        self.dist.broadcast(self.disc)
        # The generator is wrapped in DistributedDataParallel (bucketed gradient all-reduce
        # overlapping the backward pass); the tri-plane EMA buffer is averaged after each step
        # instead of DDP's broadcast from rank 0. The discriminator's R1 penalty needs a double
        # backward, which DDP does not support, so its gradients are averaged by hand.
        self.ddp = None
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=config.lr_d, betas=config.betas)
        self.step = 0
        self.saved_step: int | None = None  # the step the state file holds
        self.metadata = {"dataset": str(dataset.root), "train_config": config.to_dict(),
                         "perceptual": str(perceptual) if perceptual else "",
                         "clebs_init": str(init) if init else "", "world_size": self.dist.world}

    # -- state --------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out / "state.safetensors"

    def save(self) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "disc": self.disc.state_dict(), "opt_g": self.opt_g.state_dict(),
                 "opt_d": self.opt_d.state_dict(), "step": torch.tensor(self.step),
                 "model_config": json.dumps(self.model.config.to_dict()),
                 "run": json.dumps(self.run_settings())}
        save_state(state, self.state_path)
        self.saved_step = self.step
        save_checkpoint(self.ema, self.out / "model.safetensors", extra={
            "stage": "generator", "step": str(self.step),
            "clebs_frozen": str(self.clebs_frozen).lower(),
            "training": json.dumps(self.metadata)})

    # What a resumed run must share with the run it continues for its losses to be the ones
    # the uninterrupted run computes: every training setting but the length (steps, time
    # limit), the frozen CLeBS (--init), the perceptual term and the data. The flag that sets
    # each, for the refusal.
    # Settings added since states were first written, at the value that reproduces the runs
    # that wrote those states.
    ADDED_SETTINGS = {"d_blur_sigma": 0.0, "d_blur_fade_kimg": 200.0,
                      "density_gain": "none"}
    RUN_FLAGS = {"d_blur_sigma": "--d-blur", "d_blur_fade_kimg": "--d-blur-fade-kimg",
                 "density_weight": "--density-weight",
                 "density_gain": "an export3d from before the density term's lazy weighting",
                 "batch": "--batch", "seed": "--seed", "adv_start": "--adv-start",
                 "clebs_frozen": "--init", "perceptual": "--perceptual", "dataset": "--data",
                 "world_size": "torchrun --nproc-per-node"}

    def run_settings(self) -> dict:
        settings = {k: v for k, v in self.cfg.to_dict().items()
                    if k not in ("steps", "time_limit_min", "log_every", "sample_every",
                                 "save_every")}
        settings["betas"] = list(settings["betas"])
        manifest = self.dataset.root / "dataset.json"
        settings.update(density_gain="interval",  # what ADDED_SETTINGS says older runs had
                        clebs_frozen=self.clebs_frozen, perceptual=self.perceptual is not None,
                        dataset=hashlib.sha256(manifest.read_bytes()).hexdigest(),
                        world_size=self.dist.world)  # each rank draws its own batch
        return settings

    def resume(self) -> bool:
        if not self.state_path.is_file():
            if (self.out / "state.pt").is_file():  # what export3d wrote before
                raise UserError(f"{self.out / 'state.pt'} is a pickle (torch.save) from an "
                                "older export3d, which this one never loads; start the run over "
                                "in a new --out (its model.safetensors stays usable)")
            return False
        damaged = (f"{self.state_path} is damaged or not a training state; restore it, or "
                   "delete it to start the run over")
        try:
            state = load_state(self.state_path, map_location=self.device)
            saved = ModelConfig.from_dict(json.loads(state["model_config"]))
            run = json.loads(state["run"])
        except Exception as exc:  # noqa: BLE001 - a cut file, another file, missing keys
            raise UserError(f"{damaged} ({type(exc).__name__})") from None
        if saved.replace(expr_spread=None) != self.model.config.replace(expr_spread=None):
            raise UserError(f"{self.state_path} is a {saved.preset!r} run; resume it with the "
                            "same --preset or use a new --out")
        if run is not None:
            self._check_same_run(run)
        if saved.expr_spread != self.model.config.expr_spread:
            raise UserError(f"{self.state_path} was started with "
                            + ("another expression-code spread" if saved.expr_spread else
                               "the expression code not standardised (--unit-spread)")
                            + "; resume it with the --init or --unit-spread that started it, "
                            "or use a new --out")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.disc.load_state_dict(state["disc"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = self.saved_step = int(state["step"])
        self._drop_log_after(self.step)
        return True

    def _check_same_run(self, saved: dict) -> None:
        saved = {**self.ADDED_SETTINGS, **saved}
        now = self.run_settings()
        for key in sorted(set(saved) | set(now)):
            if saved.get(key) != now.get(key):
                what = "other data" if key == "dataset" else \
                    f"{key} = {json.dumps(saved.get(key))}, not {json.dumps(now.get(key))}"
                flag = self.RUN_FLAGS.get(key, key)
                raise UserError(f"{self.out} was trained with {what} ({flag}); resume it with "
                                "the same settings (only --steps and --time-limit may change) "
                                "or use a new --out")

    def _drop_log_after(self, step: int) -> None:
        """The log lines of steps past the saved state, which the resumed run does again."""
        path = self.out / "log.jsonl"
        if not self.dist.main or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines(keepends=True):
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        path.write_text("".join(kept))

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, batch: dict | None = None) -> dict[str, float]:
        """One optimisation step on the step's own batch (or on ``batch``, a :func:`load_batch`
        dict); returns the loss terms as floats."""
        cfg, step = self.cfg, self.step
        rng, gen = step_rng(cfg.seed, step, self.dist.rank)
        torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
        if batch is None:
            batch = load_batch(draw_pairs(self.dataset, cfg.batch, rng), self.device)
        self.model.train()
        use_adv = cfg.adv_weight > 0 and step >= cfg.adv_start
        amp = cfg.amp and self.device.type == "cuda"
        blur = self.d_blur(step)

        def disc(image, image_raw, camera):  # D as it is shown images at this step
            return self.disc(gaussian_blur(image, blur), image_raw, camera)

        # generator
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            net = self.ddp if self.ddp is not None else self.model
            out = net(batch["source"], batch["expr"], batch["camera"])
        image, triplane = out["image"], out["triplane"]
        terms = reconstruction_loss(out, batch["driving"], cfg.ssim_weight, self.perceptual,
                                    cfg.perceptual_weight)
        loss = terms["total"]
        if use_adv:
            for p in self.disc.parameters():
                p.requires_grad_(False)
            terms["g_adv"] = generator_adv_loss(disc(image, out["image_raw"],
                                                     batch["camera"]))
            loss = loss + cfg.adv_weight * terms["g_adv"]
            for p in self.disc.parameters():
                p.requires_grad_(True)
        if cfg.density_weight > 0 and step % cfg.density_every == 0:
            terms["density"] = density_regularisation(self.model, triplane.float())
            # lazy regularisation (EG3D, like R1 above): the term runs every density_every
            # steps and counts that many times when it does
            loss = loss + cfg.density_weight * cfg.density_every * terms["density"]
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()  # under torchrun, DDP has averaged the gradients in backward()
        self.dist.average_buffers(self.model)

        # discriminator
        if use_adv:
            real_raw = torch.nn.functional.interpolate(batch["driving"],
                                                       size=out["image_raw"].shape[-2:],
                                                       mode="area")
            fake = disc(image.detach(), out["image_raw"].detach(), batch["camera"])
            real = disc(batch["driving"], real_raw, batch["camera"])
            d_loss = discriminator_loss(real, fake)
            if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
                # the gradient of D's logit with respect to the image before its blur, as in EG3D
                terms["r1"] = r1_penalty(disc, batch["driving"], real_raw, batch["camera"])
                d_loss = d_loss + 0.5 * cfg.r1_gamma * cfg.r1_every * terms["r1"]
            terms["d"] = d_loss
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.dist.average_gradients(self.disc)
            self.opt_d.step()

        self.update_ema()
        self.step += 1
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["loss"] = float(loss.detach())
        return values

    def d_blur(self, step: int) -> float:
        """The std (px) of the blur on the images D is shown at ``step``: it fades with the
        images D has seen since ``adv_start``, counted over every process."""
        seen = max(step - self.cfg.adv_start, 0) * self.cfg.batch * self.dist.world
        return d_blur_sigma(seen, self.cfg.d_blur_sigma, self.cfg.d_blur_fade_kimg,
                            self.model.config.image_size)

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step)) \
            if self.step < self.cfg.ema_warmup else self.cfg.ema_decay
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, log=print) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        writer = self._tensorboard()
        start, t0 = self.step, time.monotonic()
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", desc="train",
                   disable=not self.progress, dynamic_ncols=True)
        last = {}
        interrupt = _Interrupt(log if self.dist.main else None)
        try:
            with interrupt:
                while self.step < cfg.steps:
                    values = self.train_step()
                    # One decision for every rank, each of which may see a cause alone.
                    bad, timed_out, asked = self.dist.any(
                        not all(math.isfinite(v) for v in values.values()),
                        cfg.time_limit_min > 0 and (time.monotonic() - t0) / 60
                        >= cfg.time_limit_min, interrupt.asked)
                    if self.step >= cfg.steps:  # the last step: the run ends as it would have
                        timed_out = asked = False
                    if bad:
                        raise UserError(self._diverged(values))
                    last = values
                    bar.update(1)
                    if self._after_step(values, writer, bar, stop=timed_out or asked):
                        if timed_out and self.dist.main:
                            log(f"time limit of {cfg.time_limit_min} min reached at step "
                                f"{self.step}; resume with the same command and a later "
                                "--time-limit")
                        if asked:
                            if self.dist.main:
                                log(f"stopped at step {self.step}; saved {self.state_path} "
                                    "and the model; the same command resumes")
                            raise KeyboardInterrupt
                        break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        replicas = self.check_replicas()
        elapsed = time.monotonic() - t0
        return {"steps": self.step, "steps_this_run": self.step - start,
                "seconds": elapsed, "last": last, "replicas": replicas}

    def _after_step(self, values: dict, writer, bar, stop: bool) -> bool:
        """Log, samples and saves after a step; True when the run stops here."""
        cfg = self.cfg
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            values = {k: self.dist.mean(v) for k, v in values.items()}
            self._log(values, writer)
            bar.set_postfix(loss=f"{values['loss']:.3f}", l1=f"{values['l1']:.3f}")
        if self.dist.main and (self.step % cfg.sample_every == 0
                               or self.step == cfg.steps):
            self.write_samples(writer)
        if self.step % cfg.save_every == 0 or self.step == cfg.steps or stop:
            self.save()
        return stop

    def _diverged(self, values: dict) -> str:
        kept = (f"{self.state_path} still holds step {self.saved_step}"
                if self.saved_step is not None else "no state had been saved yet")
        return (f"training diverged at step {self.step}: the loss is {values['loss']} "
                f"(terms: {', '.join(f'{k} {v:.4g}' for k, v in values.items())}); nothing "
                f"of it was saved, {kept}")

    def check_replicas(self) -> dict:
        """sha256 of every process's weights (model, EMA, discriminator), gathered on all
        ranks; rank 0 writes them to ``replicas.json``. Data parallelism must keep them equal."""
        h = hashlib.sha256()
        for module in (self.model, self.ema, self.disc):
            for name, t in sorted(module.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digests = [h.hexdigest()]
        if self.dist.world > 1:
            digests = [None] * self.dist.world
            self.dist.dist.all_gather_object(digests, h.hexdigest())
        result = {"world_size": self.dist.world, "sha256": digests,
                  "identical": len(set(digests)) == 1}
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "replicas.json").write_text(json.dumps(result, indent=2))
        return result

    def _tensorboard(self):
        if not self.dist.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("note: tensorboard is not installed (pip install tensorboard); logging to "
                  "log.jsonl only")
            return None
        # A resumed run's events replace those past the saved step (which it does again).
        return SummaryWriter(str(self.out / "tb"),
                             purge_step=self.step + 1 if self.step else None)

    def _log(self, values: dict, writer) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "time": time.time(), **values}) + "\n")
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(f"loss/{k}", v, self.step)

    @torch.no_grad()
    def write_samples(self, writer=None, count: int = 4) -> Path:
        """Rows of source | driving | output | raw render | depth, from the EMA model, on
        held-out frames when there are any."""
        import cv2

        from ..media import depth_to_rgb, to_uint8_rgb

        rng = np.random.default_rng([self.cfg.seed, 7])
        clip = max(self.dataset.clips, key=len)
        train = self.dataset.positions(clip, "train")
        heldout = np.concatenate([self.dataset.positions(clip, "interp"),
                                  self.dataset.positions(clip, "extrap")])
        targets = heldout if len(heldout) else train
        pairs = [(clip, int(train[0]), int(d)) for d in rng.choice(targets, size=count)]
        batch = load_batch(pairs, self.device)
        out = self.ema(batch["source"], batch["expr"], batch["camera"])
        size = self.model.config.image_size
        rows = []
        for i in range(count):
            raw = torch.nn.functional.interpolate(out["image_raw"][i:i + 1], size=(size, size),
                                                  mode="nearest")[0]
            depth = torch.nn.functional.interpolate(out["depth"][i:i + 1], size=(size, size),
                                                    mode="nearest")[0]
            cells = [to_uint8_rgb(batch["source"][i]), to_uint8_rgb(batch["driving"][i]),
                     to_uint8_rgb(out["image"][i]), to_uint8_rgb(raw),
                     depth_to_rgb(depth, self.model.config.ray_near, self.model.config.ray_far)]
            rows.append(np.concatenate(cells, 1))
        grid = np.concatenate(rows, 0)
        path = self.out / "samples" / f"step_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        if writer is not None:
            writer.add_image("samples", grid, self.step, dataformats="HWC")
        return path



class _Interrupt(contextlib.AbstractContextManager):
    """Ctrl-C / SIGTERM during training: the step under way finishes, the run saves and stops
    (``asked``); a second Ctrl-C stops at once. Signal handlers exist in the main thread
    only, so elsewhere this does nothing."""

    def __init__(self, log=None):
        self.asked = False
        self.log = log
        self.saved = {}

    def _handle(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        if self.log:
            self.log("\nstopping after this step and saving (Ctrl-C again to stop at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False
