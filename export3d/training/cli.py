"""``export3d prepare``, ``export3d train clebs|generator`` and ``export3d eval``.

    export3d prepare WolfgangLanger_Pexels.mp4 --preset demo64 --out data/
    export3d train clebs --data data/ --preset demo64 --out runs/clebs.safetensors
    export3d train generator --data data/ --preset demo64 --init runs/clebs.safetensors \\
        --out runs/g
    export3d eval --checkpoint runs/g/model.safetensors --data data/ --drive other.mp4 \\
        --json eval.json

``train generator`` resumes from ``--out/state.safetensors`` when it exists, so re-running the same
command continues the run. Under ``torchrun --nproc-per-node N -m export3d.cli train ...`` it
trains data-parallel (NCCL on GPUs, Gloo on CPU).
"""
from __future__ import annotations

import dataclasses

from .. import jsonfile
from ..cli import at_least, minutes, non_negative
from ..devices import resolve_device


def run_prepare(args) -> None:
    from ..config import get_config
    from .data import prepare

    size = get_config(args.preset).image_size
    manifest = prepare(args.videos, args.out, size, max_frames=args.max_frames,
                       progress=not args.quiet)
    kept = sum(c["kept"] for c in manifest["clips"])
    print(f"wrote {args.out}: {kept} crops of {size}px from {len(manifest['clips'])} clip(s)")


def run_train(args) -> None:
    import torch

    from ..config import get_config
    from .data import Dataset

    from ..media import output_path

    config = get_config(args.preset)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.stage == "clebs":
        from .clebs_train import train_clebs

        output_path(args.out)  # before the training, not after it
        dataset = Dataset(args.data, config.image_size)
        train_clebs(config, dataset, args.out,
                    steps=args.steps if args.steps is not None else 400, frames=args.frames,
                    seed=args.seed, device=resolve_device(args.device), progress=not args.quiet,
                    unit_spread=args.unit_spread)
        return
    from .trainer import TrainConfig, Trainer

    tc = TrainConfig(seed=args.seed, time_limit_min=args.time_limit or 0.0,
                     batch=args.batch if args.batch is not None else TrainConfig.batch)
    if args.steps is not None:
        tc = dataclasses.replace(tc, steps=args.steps)
    if args.adv_start is not None:
        tc = dataclasses.replace(tc, adv_start=args.adv_start)
    if args.density_weight is not None:
        tc = dataclasses.replace(tc, density_weight=args.density_weight)
    if args.d_blur is not None:
        tc = dataclasses.replace(tc, d_blur_sigma=args.d_blur)
    if args.d_blur_fade_kimg is not None:
        tc = dataclasses.replace(tc, d_blur_fade_kimg=args.d_blur_fade_kimg)
    dataset = Dataset(args.data, config.image_size, tc.holdout_every, tc.holdout_tail)
    trainer = Trainer(config, dataset, args.out, tc, device=resolve_device(args.device),
                      init=args.init, progress=not args.quiet, perceptual=args.perceptual,
                      unit_spread=args.unit_spread)
    if trainer.resume():
        if trainer.step >= tc.steps:
            if trainer.dist.main:
                print(f"{args.out} is already at step {trainer.step} (--steps {tc.steps}); "
                      "nothing to train (a larger --steps goes on)")
            trainer.dist.close()
            return
        print(f"resuming {args.out} at step {trainer.step}")
    elif args.init is None and trainer.dist.main:
        print("note: no --init CLeBS checkpoint: CLeBS trains jointly with the generator "
              "(the paper's E2E-LeBS ablation); run 'export3d train clebs' first for the "
              "paper's frozen CLeBS")
    result = trainer.fit()
    trainer.dist.close()
    if trainer.dist.main:
        print(f"step {result['steps']}: loss {result['last']['loss']:.4f}; "
              f"wrote {trainer.out / 'model.safetensors'}")


def run_eval(args) -> None:
    from ..media import output_path
    from .evaluate import evaluate, format_table

    if args.json:
        output_path(args.json)  # before the evaluation, not after it
    report = evaluate(args.checkpoint, args.data, drive=args.drive,
                      device=resolve_device(args.device), progress=not args.quiet,
                      retrack=not args.no_retrack, source_frame=args.source_frame,
                      clip_name=args.clip)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            jsonfile.dump(report, f, indent=2)
        print(f"wrote {args.json}")


def register(subparsers) -> None:
    from ..config import PRESETS

    p = subparsers.add_parser("prepare", help="make a training dataset from talking-head videos")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo64",
                   help="crops are made at this preset's image size")
    p.add_argument("--out", required=True, help="new dataset folder")
    p.add_argument("--max-frames", type=at_least(1), help="at most this many frames per video")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run_prepare)

    t = subparsers.add_parser("train", help="train CLeBS or the generator on a prepared dataset")
    t.add_argument("stage", choices=("clebs", "generator"))
    t.add_argument("--data", required=True, help="dataset folder from 'export3d prepare'")
    t.add_argument("--preset", choices=sorted(PRESETS), default="demo64")
    t.add_argument("--out", required=True, help="clebs: checkpoint file; generator: run folder")
    t.add_argument("--init", help="generator: the CLeBS checkpoint from 'train clebs' (frozen)")
    t.add_argument("--steps", type=at_least(1),
                   help="total steps (clebs default 400, generator 10000)")
    t.add_argument("--batch", type=at_least(1), help="generator batch per process (default 8)")
    t.add_argument("--frames", type=at_least(2), default=32,
                   help="clebs: frames of one clip per batch")
    t.add_argument("--perceptual", help="generator: VGG-16 weights (safetensors of torchvision's "
                   "vgg16 'features') for a perceptual loss; without it there is none")
    t.add_argument("--adv-start", type=at_least(0),
                   help="generator: step where the GAN loss starts")
    t.add_argument("--density-weight", type=non_negative, metavar="W",
                   help="generator: weight of EG3D's density regulariser per step on average "
                   "(it runs every 4 steps, weighted 4 W; default 0.25, 0: none)")
    t.add_argument("--d-blur", type=non_negative, metavar="SIGMA",
                   help="generator: std in pixels at 512 px (scaled to the preset's size) of the "
                   "Gaussian blur on the images the discriminator is shown at its start, fading "
                   "out (EG3D; default 10, 0: none)")
    t.add_argument("--d-blur-fade-kimg", type=non_negative, metavar="K",
                   help="generator: thousands of images the discriminator sees until its blur "
                   "is gone (default 200)")
    t.add_argument("--time-limit", type=minutes, help="generator: save and stop after N minutes")
    t.add_argument("--unit-spread", action="store_true",
                   help="feed the expression code to CLeBS as extracted, not divided by each "
                   "channel's spread over the training frames (how demo64 was trained); "
                   "generator: only without --init, whose CLeBS decides")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--threads", type=at_least(1), help="CPU threads for PyTorch")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(run=run_train)

    e = subparsers.add_parser("eval", help="score a checkpoint on a dataset's held-out frames")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--drive", help="cross-identity: a video of another person to drive with")
    e.add_argument("--source-frame", type=int, help="video frame index of the source crop (a "
                   "training frame; default: the clip's first)")
    e.add_argument("--clip", help="the dataset's clip to score (default: the longest)")
    e.add_argument("--json", help="write the report here")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-retrack", action="store_true",
                   help="skip AED-mp/APD-mp (re-tracking the generated frames)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(run=run_eval)
