"""Model configuration: one frozen dataclass, three presets (``paper512``; ``tiny`` for tests;
``demo64``, the small model trained on CPU that ships in ``assets/``).

Every number MODEL.md fixes is a field here, never a constant buried in a module. A config
round-trips through JSON (``to_dict`` / ``from_dict``) so a checkpoint can carry it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# Version of the expression code the model is conditioned on (tracking.md 4.4, MPX-64).
# Checkpoints record it; loading refuses a checkpoint trained on another code.
EXPRESSION_CODE_VERSION = "mpx64-v1"


@dataclass(frozen=True)
class ModelConfig:
    preset: str
    image_size: int  # H = W of the source image and of the final frame
    expr_dim: int = 64

    # CLeBS: expr [B, expr_dim] -> MLP -> lambda [B, n] -> Q lambda, Q [d, n] orthonormal.
    clebs_hidden: tuple[int, ...] = (512, 512, 512)
    clebs_basis: int = 10
    clebs_dim: int = 512
    clebs_loss: str = "decoupled"  # "decoupled" (paper transcription) or "infonce"
    clebs_temperature: float = 0.07  # learnable, initial value
    # sigma_k of tracking.md 4.4: each expression channel's spread over the training frames.
    # CLeBS divides the code by it, so its input has unit spread whatever the channel's units.
    # Training measures it (export3d.training.data.expression_spread) and the checkpoint's
    # config carries it; None: the code as the extractor gives it (how demo64 was trained).
    expr_spread: tuple[float, ...] | None = None

    # Generator (Live3DPortrait-style hybrid, paper-spec 4.4).
    token_dim: int = 1024  # width of the low-res ViT on the H/16 token grid
    heads: int = 4
    mlp_ratio: int = 2
    vit_blocks: int = 5
    fusion_blocks: int = 1
    fusion_dim: int = 1024  # token width of the fusion-stage block on the H/4 grid
    fusion_sr_ratio: int = 2  # spatial reduction of keys/values in the fusion block
    stem_channels: tuple[int, ...] = (64, 128, 256)  # low-res ResNet stem, stride 2 each
    high_channels: int = 96  # high-res branch output (H/2)
    low_up_channels: tuple[int, int] = (128, 128)  # low-res decoder convs at H/4 and H/2
    fusion_channels: tuple[int, int] = (256, 128)  # fusion-stage conv widths
    eadaln_gate: bool = False  # DiT adaLN-Zero gate; paper: off
    lowpass_sigma: float = 1.0  # fixed Gaussian after every PixelShuffle (5 taps)
    triplane_channels: int = 32
    triplane_ema_momentum: float = 0.999

    # Renderer (EG3D semantics, MODEL.md "Renderer").
    render_size: int = 128
    samples_coarse: int = 48
    samples_fine: int = 48
    ray_near: float = 2.25
    ray_far: float = 3.3
    box_warp: float = 1.0
    eg3d_plane_axes: bool = False  # True: EG3D's transposed third plane (z, x)
    decoder_hidden: int = 64

    # Super-resolution (EG3D Hybrid-8X topology, plain convs).
    sr_channels: tuple[int, int] = (256, 128)

    @property
    def triplane_size(self) -> int:
        return self.image_size // 2

    @property
    def token_grid(self) -> int:
        return self.image_size // 16

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
        values = {}
        for key, value in data.items():
            values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def __post_init__(self):
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if self.image_size != 4 * self.render_size:
            raise ValueError("the super-resolution is x4: image_size must be 4 * render_size")
        if self.token_dim % 4 or self.fusion_dim % 4:
            raise ValueError("token widths must be divisible by 4 (PixelShuffle(2))")
        if self.expr_spread is not None:
            if len(self.expr_spread) != self.expr_dim:
                raise ValueError(f"expr_spread needs {self.expr_dim} values (one per expression "
                                 f"channel), got {len(self.expr_spread)}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                       for v in self.expr_spread):
                raise ValueError("expr_spread values must be finite and positive")


PRESETS: dict[str, ModelConfig] = {
    "paper512": ModelConfig(preset="paper512", image_size=512),
    "tiny": ModelConfig(
        preset="tiny",
        image_size=64,
        clebs_hidden=(64,),
        clebs_dim=64,
        token_dim=64,
        heads=2,
        vit_blocks=2,
        fusion_blocks=1,
        fusion_dim=64,
        stem_channels=(16, 32, 32),
        high_channels=16,
        low_up_channels=(16, 16),
        fusion_channels=(32, 16),
        triplane_channels=8,
        render_size=16,
        samples_coarse=8,
        samples_fine=8,
        decoder_hidden=16,
        sr_channels=(32, 16),
    ),
    # Small enough to train on a 2-core CPU in about an hour (the demo model in assets/):
    # tiny's topology at 64 x 64, twice as wide, 16-channel tri-planes, 12 + 12 samples.
    "demo64": ModelConfig(
        preset="demo64",
        image_size=64,
        clebs_hidden=(128, 128),
        clebs_dim=128,
        token_dim=128,
        heads=2,
        vit_blocks=2,
        fusion_blocks=1,
        fusion_dim=128,
        stem_channels=(32, 64, 64),
        high_channels=32,
        low_up_channels=(32, 32),
        fusion_channels=(64, 32),
        triplane_channels=16,
        render_size=16,
        samples_coarse=12,
        samples_fine=12,
        decoder_hidden=32,
        sr_channels=(64, 32),
    ),
}


def get_config(preset: str, **overrides) -> ModelConfig:
    """The named preset, optionally with fields replaced
    (``get_config("tiny", image_size=128)``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    config = PRESETS[preset]
    return config.replace(**overrides) if overrides else config
