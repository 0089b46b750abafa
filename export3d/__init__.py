"""Export3D: one-shot, 3D-aware portrait reenactment (Ki, Min, Chae, ECCV 2024) in PyTorch."""
from .config import EXPRESSION_CODE_VERSION, PRESETS, ModelConfig, get_config

__version__ = "0.1.0"
__all__ = ["EXPRESSION_CODE_VERSION", "PRESETS", "ModelConfig", "get_config", "__version__"]
