"""Training steps on real crops: losses go down, a tiny model overfits, resume is exact, and
two Gloo processes stay in lock-step."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from export3d.clebs import contrastive_loss
from export3d.config import get_config
from export3d.media import to_uint8_rgb
from export3d.model import build_model
from export3d.training.clebs_train import ImageEncoder
from export3d.training.data import to_tensor
from export3d.training.evaluate import psnr
from export3d.training.trainer import TrainConfig, Trainer, load_batch

OVERFIT_PSNR_DB = 25.0
OVERFIT_MAX_STEPS = 1000
REPO = Path(__file__).resolve().parents[3]


def quiet_config(**changes) -> TrainConfig:
    base = TrainConfig(steps=10 ** 6, batch=4, log_every=10 ** 6, sample_every=10 ** 6,
                       save_every=10 ** 6, adv_start=10 ** 6)
    return TrainConfig(**{**base.to_dict(), **changes})


def test_one_clebs_step_lowers_the_contrastive_loss(dataset):
    config = get_config("tiny")
    clip = dataset.clips[0]
    pick = np.arange(0, 32, 2)
    images = to_tensor([clip.image(k) for k in pick])
    expr = torch.from_numpy(clip.expr[pick])
    clebs = build_model(config).clebs.train()
    clebs.unfreeze_basis()
    encoder = ImageEncoder(config.clebs_dim)
    opt = torch.optim.Adam(list(clebs.parameters()) + list(encoder.parameters()), lr=1e-3)

    def loss():
        return contrastive_loss(encoder(images), clebs(expr), 0.07, variant="decoupled")

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    before = before.item()
    assert after.item() < before - 1e-4, (before, after.item())


def test_one_generator_step_lowers_the_loss_on_a_fixed_batch(dataset, tmp_path):
    trainer = Trainer(get_config("tiny"), dataset, tmp_path, quiet_config(lr=1e-3),
                      progress=False)
    clip = dataset.clips[0]
    batch = load_batch([(clip, 0, d) for d in (5, 15, 25, 35)], "cpu")

    def loss():
        from export3d.training.losses import reconstruction_loss

        trainer.model.eval()  # no jitter: the same loss function before and after
        with torch.no_grad():
            out = trainer.model(batch["source"], batch["expr"], batch["camera"])
        return float(reconstruction_loss(out, batch["driving"])["total"])

    before = loss()
    trainer.train_step(batch)
    after = loss()
    assert after < before - 1e-3, (before, after)


def test_tiny_model_overfits_four_frames(dataset, tmp_path):
    """Memorising four frames is the least a working model + loss + optimiser must manage."""
    config = quiet_config(lr=3e-3, betas=(0.9, 0.99), adv_weight=0.0, density_weight=0.0)
    trainer = Trainer(get_config("tiny"), dataset, tmp_path, config, progress=False)
    clip = dataset.clips[0]
    batch = load_batch([(clip, 0, d) for d in (0, 12, 24, 36)], "cpu")
    value = -math.inf
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster than two fighting (~500 steps, 40 s)
    try:
        for step in range(1, OVERFIT_MAX_STEPS + 1):
            trainer.train_step(batch)
            if step % 100 == 0:
                trainer.model.eval()
                with torch.no_grad():
                    out = trainer.model(batch["source"], batch["expr"], batch["camera"])
                value = float(np.mean([psnr(to_uint8_rgb(a), to_uint8_rgb(b))
                                       for a, b in zip(out["image"], batch["driving"])]))
                if value > OVERFIT_PSNR_DB:
                    break
    finally:
        torch.set_num_threads(threads)
    assert value > OVERFIT_PSNR_DB, f"PSNR {value:.2f} dB after {step} steps"


def test_resume_reproduces_the_next_step_exactly(dataset, tmp_path):
    # GAN, R1 and density terms all on, so every piece of state must come back
    config = quiet_config(steps=2, adv_start=0, r1_every=2, density_every=1, batch=2)
    first = Trainer(get_config("tiny"), dataset, tmp_path, config, progress=False)
    first.fit()  # saves at its last step
    assert (tmp_path / "state.safetensors").is_file() and (tmp_path / "model.safetensors").is_file()
    expected = first.train_step()  # step 3 of the uninterrupted run

    second = Trainer(get_config("tiny"), dataset, tmp_path, config, progress=False)
    assert second.resume() and second.step == 2
    got = second.train_step()
    assert set(got) == set(expected) and {"g_adv", "d", "r1", "density"} <= set(got)
    for key in expected:
        assert got[key] == expected[key], (key, got[key], expected[key])

    # the run's files: log, samples grid, TensorBoard events, and a loadable EMA checkpoint
    from export3d.checkpoint import load_checkpoint

    model = load_checkpoint(tmp_path / "model.safetensors")
    assert model.config.preset == "tiny"
    assert list((tmp_path / "samples").glob("step_*.png"))
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    if _has_tensorboard():
        assert list((tmp_path / "tb").glob("events.*"))


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_keep_identical_weights(dataset, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}

    def train(out, *launcher):
        cmd = [sys.executable, *launcher, "-m", "export3d.cli", "train", "generator",
               "--data", str(dataset.root), "--preset", "tiny", "--out", str(out),
               "--steps", "3", "--batch", "2", "--adv-start", "1", "--device", "cpu", "--quiet"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "replicas.json").read_text())

    two = train(tmp_path / "two", "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port()))
    assert two["world_size"] == 2 and two["identical"]
    assert len(two["sha256"]) == 2 and two["sha256"][0] == two["sha256"][1]
    # the ranks drew different batches and averaged their gradients: a one-process run of
    # the same command ends with other weights (else the test above proves nothing)
    one = train(tmp_path / "one")
    assert one["world_size"] == 1 and one["sha256"][0] != two["sha256"][0]
