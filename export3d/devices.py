"""Every command's ``--device``: checked before any work starts, so that a machine without the
device asked for gets one sentence that says what to do, not PyTorch's traceback from deep
inside the first transfer ("Torch not compiled with CUDA enabled")."""
from __future__ import annotations

from .errors import UserError


def resolve_device(name: str | None, default: str = "cpu") -> str:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``, or ``auto``: a CUDA GPU when there is one) as
    the device string to use; a :class:`UserError` when it is not a device or is not here."""
    import torch

    name = (name or default).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cpu":
        return name
    if device.type != "cuda":
        raise UserError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        why = ("this PyTorch is a CPU build; install a CUDA build of torch" if
               torch.version.cuda is None else
               "PyTorch sees no CUDA GPU (no driver, or CUDA_VISIBLE_DEVICES hides it)")
        raise UserError(f"--device {name}: {why}, or use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {name}: this machine has {count} CUDA GPU"
                        f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    return name
