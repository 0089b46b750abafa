"""What a training run does when something goes wrong: damaged data, a diverging loss, Ctrl-C,
a resume with other settings, bad flags, unwritable outputs. Each is one sentence and loses
nothing that was saved."""
from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from export3d.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from export3d.config import get_config
from export3d.errors import UserError
from export3d.model import build_model
from export3d.training.data import Dataset, DatasetError, prepare
from export3d.training.state import load_state, save_state
from export3d.training.trainer import TrainConfig, Trainer


def quiet(**changes) -> TrainConfig:
    base = TrainConfig(steps=10 ** 6, batch=2, log_every=1, sample_every=10 ** 6,
                       save_every=10 ** 6, adv_start=10 ** 6)
    return TrainConfig(**{**base.to_dict(), **changes})


@pytest.fixture
def copy_of(dataset, tmp_path):
    def make(name="data"):
        out = tmp_path / name
        shutil.copytree(dataset.root, out)
        return out
    return make


def meta_path(root):
    clip = json.loads((root / "dataset.json").read_text())["clips"][0]["name"]
    return root / clip / "meta.npz"


def test_a_nan_code_is_refused_when_the_dataset_opens(copy_of):
    root = copy_of()
    meta = dict(np.load(meta_path(root)))
    meta["expr"][5, 3] = np.nan
    np.savez(meta_path(root), **meta)
    with pytest.raises(DatasetError, match=f"frame {int(meta['frame'][5])} .*NaN or infinite"):
        Dataset(root, 64)


@pytest.mark.parametrize("damage", ["manifest_not_json", "manifest_without_key", "meta_garbage",
                                    "meta_cut", "crop_missing"])
def test_a_damaged_dataset_is_one_sentence(copy_of, damage):
    root = copy_of()
    meta = meta_path(root)
    if damage == "manifest_not_json":
        (root / "dataset.json").write_text('{"format": "export3d-dataset-v1", ')
    elif damage == "manifest_without_key":
        manifest = json.loads((root / "dataset.json").read_text())
        del manifest["expression_code"]
        (root / "dataset.json").write_text(json.dumps(manifest))
    elif damage == "meta_garbage":
        meta.write_text("garbage")
    elif damage == "meta_cut":
        meta.write_bytes(meta.read_bytes()[:2000])
    else:
        frame = int(np.load(meta)["frame"][7])
        (meta.parent / f"{frame:06d}.png").unlink()
    with pytest.raises(DatasetError, match="damaged|missing"):
        Dataset(root, 64)


def test_a_video_without_a_face_makes_no_dataset(tmp_path):
    from export3d.assets import asset_path

    video = asset_path("no_face.mp4", fetch=True)
    with pytest.raises(DatasetError, match="no frame with a face"):
        prepare([video], tmp_path / "d", 64, max_frames=10, progress=False,
                log=lambda *_: None)
    assert not (tmp_path / "d" / "dataset.json").exists()


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_save(dataset, tmp_path):
    trainer = Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=2, save_every=2),
                      progress=False)
    trainer.fit()
    saved = load_checkpoint(tmp_path / "model.safetensors").state_dict()
    lines = (tmp_path / "log.jsonl").read_text()

    again = Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=6, save_every=1),
                    progress=False)
    assert again.resume() and again.step == 2
    with torch.no_grad():
        next(again.model.parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match="diverged at step 3: the loss is nan.*still holds step 2"):
        again.fit()
    state = load_state(tmp_path / "state.safetensors")
    assert int(state["step"]) == 2  # the NaN step was never saved
    kept = load_checkpoint(tmp_path / "model.safetensors").state_dict()
    assert all(torch.equal(kept[k], saved[k]) for k in saved)
    assert (tmp_path / "log.jsonl").read_text() == lines  # and never logged


class PeerDistributed:
    """One rank's view of a two-rank run whose other rank reports ``peer`` flags at step
    ``when``: the collective OR, as ``Distributed.any`` computes it."""

    def __init__(self, real, when: int, peer: tuple):
        self.real, self.when, self.peer, self.trainer = real, when, peer, None

    def __getattr__(self, name):
        return getattr(self.real, name)

    def any(self, *flags):
        peer = self.peer if self.trainer.step == self.when else (False,) * len(flags)
        return tuple(bool(a or b) for a, b in zip(flags, peer))


def test_a_time_limit_seen_by_one_rank_stops_every_rank_at_that_step(dataset, tmp_path):
    # The hang this prevents: each rank read its own clock, one stopped and the other waited
    # in the next step's all-reduce. The stop is now a collective OR, so a rank whose own
    # clock has not run out stops (and saves) with its peer.
    trainer = Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=10), progress=False)
    trainer.dist = PeerDistributed(trainer.dist, when=3, peer=(False, True, False))
    trainer.dist.trainer = trainer
    messages = []
    result = trainer.fit(log=messages.append)
    assert result["steps"] == 3 and "time limit" in messages[-1]
    assert int(load_state(tmp_path / "state.safetensors")["step"]) == 3


def ctrl_c_after_step(trainer: Trainer, at: int) -> None:
    """A SIGINT to this process once step ``at`` is done, as a terminal's Ctrl-C mid-run."""
    step = trainer.train_step

    def step_then_signal():
        values = step()
        if trainer.step == at:
            os.kill(os.getpid(), signal.SIGINT)
        return values

    trainer.train_step = step_then_signal


def test_ctrl_c_finishes_the_step_saves_and_resumes_there(dataset, tmp_path):
    trainer = Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=50), progress=False)
    ctrl_c_after_step(trainer, 3)
    messages = []
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(log=messages.append)
    assert "stopped at step 3" in messages[-1]
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    # A log line past the save (as from a step the save did not hold) is dropped on resume.
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
    again = Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=50), progress=False)
    assert again.resume() and again.step == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text()
             .splitlines()]
    assert steps == [1, 2, 3]


def test_ctrl_c_in_the_last_step_lets_the_run_finish(dataset, tmp_path):
    trainer = Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=2), progress=False)
    ctrl_c_after_step(trainer, 2)
    result = trainer.fit()  # no KeyboardInterrupt: the run was done
    assert result["steps"] == 2 and (tmp_path / "replicas.json").is_file()


def test_a_resume_with_other_settings_is_refused(dataset, tmp_path):
    config = get_config("tiny")
    Trainer(config, dataset, tmp_path, quiet(steps=1), progress=False).fit()
    with pytest.raises(UserError, match=r"batch = 2, not 3 \(--batch\)"):
        Trainer(config, dataset, tmp_path, quiet(steps=2, batch=3), progress=False).resume()
    init = tmp_path / "clebs.safetensors"
    save_checkpoint(build_model(config), init, extra={"stage": "clebs"})
    with pytest.raises(UserError, match=r"clebs_frozen = false, not true \(--init\)"):
        Trainer(config, dataset, tmp_path, quiet(steps=2), init=str(init),
                progress=False).resume()
    class TwoRanks:  # a run made by two torchrun processes, resumed by one
        world, rank, main = 2, 0, True
    two = Trainer(config, dataset, tmp_path, quiet(steps=2), progress=False)
    real = two.dist
    two.dist = TwoRanks()
    saved = two.run_settings()
    two.dist = real
    with pytest.raises(UserError, match=r"world_size = 2, not 1 \(torchrun --nproc-per-node\)"):
        two._check_same_run(saved)
    # The length may change.
    longer = Trainer(config, dataset, tmp_path, quiet(steps=5, time_limit_min=3.0),
                     progress=False)
    assert longer.resume() and longer.step == 1
    # A state written before D's blur existed holds no blur settings: it was a run without.
    state_path = tmp_path / "state.safetensors"
    state = load_state(state_path)
    run = json.loads(state["run"])
    del run["d_blur_sigma"], run["d_blur_fade_kimg"]
    save_state({**state, "run": json.dumps(run)}, state_path)
    with pytest.raises(UserError, match=r"d_blur_sigma = 0.0, not 10.0 \(--d-blur\)"):
        Trainer(config, dataset, tmp_path, quiet(steps=2), progress=False).resume()
    assert Trainer(config, dataset, tmp_path, quiet(steps=2, d_blur_sigma=0.0),
                   progress=False).resume()
    # One written before the density term was weighted by its interval cannot be resumed.
    del run["density_gain"]
    save_state({**state, "run": json.dumps(run)}, state_path)
    with pytest.raises(UserError, match="from before the density term's lazy weighting"):
        Trainer(config, dataset, tmp_path, quiet(steps=2, d_blur_sigma=0.0),
                progress=False).resume()


def test_a_damaged_state_file_is_one_sentence(dataset, tmp_path):
    Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=1), progress=False).fit()
    state = tmp_path / "state.safetensors"
    state.write_bytes(state.read_bytes()[:5000])
    with pytest.raises(UserError, match="damaged or not a training state"):
        Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=2), progress=False).resume()


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--steps", "-5"], "argument --steps: must be at least 1"),
    (["--batch", "0"], "argument --batch: must be at least 1"),
    (["--threads", "-1"], "argument --threads: must be at least 1"),
    (["--frames", "1"], "argument --frames: must be at least 2"),
    (["--time-limit", "nan"], "argument --time-limit: must be a positive number"),
    (["--adv-start", "x"], "argument --adv-start: 'x' is not a whole number"),
    (["--d-blur", "-1"], "argument --d-blur: must be a number >= 0, got -1"),
    (["--density-weight", "x"], "argument --density-weight: 'x' is not a number"),
    (["--d-blur-fade-kimg", "inf"], "argument --d-blur-fade-kimg: must be a number >= 0"),
])
def test_bad_numbers_are_refused_before_any_work(flags, message, capsys):
    from export3d.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "generator", "--data", "nowhere", "--out", "nowhere", *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_clebs_output_is_checked_before_training(dataset, tmp_path, capsys):
    from export3d.cli import main

    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(["train", "clebs", "--data", str(dataset.root), "--preset", "tiny",
                 "--out", str(folder), "--steps", "2", "--quiet"]) == 2
    assert "it is a folder" in capsys.readouterr().err
    assert not (tmp_path / "a_folder.tmp").exists()


def test_a_checkpoint_that_cannot_be_written_is_one_sentence(tmp_path):
    path = tmp_path / "m.safetensors"
    (tmp_path / "m.safetensors.tmp").mkdir()  # in the way of the part file
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(build_model(get_config("tiny")), path)
    assert not path.exists()


def test_eval_names_its_clip_and_refuses_one_without_held_out_frames(dataset, tmp_path):
    from export3d.training.evaluate import evaluate

    checkpoint = save_checkpoint(build_model(get_config("tiny")), tmp_path / "m.safetensors")
    with pytest.raises(DatasetError, match="has no clip 'other'"):
        evaluate(checkpoint, dataset.root, clip_name="other", retrack=False)
    # A clip of three frames holds none out (every 10th frame; 15 % of 3 rounds to 0).
    root = tmp_path / "short"
    shutil.copytree(dataset.root, root)
    meta = dict(np.load(meta_path(root)))
    np.savez(meta_path(root), **{k: (v[:3] if k in ("frame", "t", "expr", "camera", "euler",
                                                   "confidence") else v)
                                  for k, v in meta.items()})
    with pytest.raises(UserError, match="no held-out frames"):
        evaluate(checkpoint, root, retrack=False)


def test_track_and_prepare_refuse_zero_frames(capsys):
    from export3d.cli import main

    for argv in (["track", "clip.mp4", "--out", "x.npz"], ["prepare", "clip.mp4", "--out", "d"]):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--max-frames", "0"])
        assert exit_.value.code == 2
        assert "argument --max-frames: must be at least 1, got 0" in capsys.readouterr().err


def test_the_training_state_round_trips_without_a_pickle(tmp_path):
    # state.safetensors: tensors by their path, the nesting as JSON; integer keys (an
    # optimiser's parameter ids), lists, None and strings come back as they went in, and no
    # byte of the file is a pickle.
    from export3d.training.state import StateError, save_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.99))
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": torch.tensor(7),
             "run": json.dumps({"seed": 1}), "none": None, "pairs": [1, 2.5, "x"]}
    path = tmp_path / "state.safetensors"
    save_state(state, path)
    back = load_state(path)
    assert back["opt"]["param_groups"][0]["betas"] == [0.0, 0.99]
    assert sorted(back["opt"]["state"]) == [0, 1] and int(back["step"]) == 7
    assert back["none"] is None and back["pairs"] == [1, 2.5, "x"] and back["run"] == state["run"]
    for key, value in model.state_dict().items():
        assert torch.equal(back["model"][key], value)
    again = torch.optim.Adam(model.parameters(), lr=1e-3)
    again.load_state_dict(back["opt"])  # what resume does
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0][
        "exp_avg"])
    raw = path.read_bytes()  # a safetensors file: header length, then its JSON header
    assert raw[8:9] == b"{" and raw[:1] != b"\x80"  # (a pickle starts with its protocol byte)
    assert not (tmp_path / "state.safetensors.tmp").exists()
    torch.save(state, tmp_path / "pickled.safetensors")
    with pytest.raises(StateError):
        load_state(tmp_path / "pickled.safetensors")


def test_an_old_pickled_state_is_refused_not_loaded(dataset, tmp_path):
    torch.save({"step": torch.tensor(1)}, tmp_path / "state.pt")
    with pytest.raises(UserError, match="state.pt is a pickle .* never loads; start the run "
                       "over in a new --out"):
        Trainer(get_config("tiny"), dataset, tmp_path, quiet(steps=2), progress=False).resume()
