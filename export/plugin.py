"""The ``plugin`` variant: the whole ray marcher as one custom ONNX node.

Op type, domain, version, attribute names and the input/output order come from the engines
side's contract module, ``engines.raymarch.contract`` (the TensorRT plugin imports the same
module), never from here. What this module needs from it, by name:
- ``DOMAIN``, ``OP_TYPE`` (or ``OP_NAME``), ``VERSION``;
- ``INPUTS``: input names in node order, drawn from ``triplane``, ``w1`` ``[C, Hd]``,
  ``b1 [Hd]``, ``w2 [Hd, 1 + F]``, ``b2 [1 + F]``, ``origins`` / ``directions`` ``[B, R, 3]``
  (the arguments of ``export3d.renderer.raymarch_reference``, decoder in math layout);
- ``TRIPLANE_LAYOUT`` (optional): ``"channels_last"``, the node takes the tri-plane as
  ``[B, 3, P, P, C]`` (a Transpose in the graph: one copy of the tri-plane at most), else as
  ``[B, 3, C, P, P]``;
- ``OUTPUTS``: output names in node order, drawn from ``features [B, R, F]``, ``depth [B, R]``,
  ``opacity [B, R]`` and ``workspace`` (scratch nothing reads, shape from the contract's
  ``workspace_shape(B, R, Sc, Sf)``);
- ``ATTRIBUTES``: attribute names, drawn from the :class:`RayMarchSettings` fields ``near``,
  ``far``, ``samples_coarse``, ``samples_fine``, ``box_warp``, ``eg3d_plane_axes`` (0/1), or
  ``plane_axes`` (6 ints, flattened pairs); or a function ``attributes(settings) -> dict``.
The node's forward in PyTorch is the reference ray marcher, so tracing produces the right
shapes; its ``symbolic`` emits the node (TorchScript exporter). The node reads the tri-plane
in the graph's precision (fp16 in an fp16 graph: the kernel reads half the bytes and sums the
taps in packed fp16) and returns float32; the ray-march accumulation is float32 in every
precision.
"""
from __future__ import annotations

import torch

from export3d.errors import UserError
from export3d.renderer import Decoder, RayMarchSettings, raymarch_reference

KNOWN_INPUTS = ("triplane", "w1", "b1", "w2", "b2", "origins", "directions")
KNOWN_OUTPUTS = ("features", "depth", "opacity")
SCRATCH_OUTPUTS = ("workspace",)


class PluginContractError(UserError):
    """The engines contract is missing or does not describe a node this exporter can emit."""


def contract():
    try:
        from engines.raymarch import contract as module
    except ImportError as exc:
        raise PluginContractError(
            f"the plugin variant takes its custom node from engines.raymarch.contract, which "
            f"cannot be imported ({exc}); export --variant portable, or install the engines "
            "package") from None
    return module


def _get(module, *names):
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise PluginContractError(f"engines.raymarch.contract defines none of {', '.join(names)}; "
                              "the plugin graph cannot be emitted without it")


def custom_op_id() -> tuple[str, str]:
    c = contract()
    return str(_get(c, "DOMAIN")), str(_get(c, "OP_TYPE", "OP_NAME"))


def contract_summary() -> dict:
    c = contract()
    return {"domain": str(_get(c, "DOMAIN")), "op_type": str(_get(c, "OP_TYPE", "OP_NAME")),
            "version": int(_get(c, "VERSION")), "inputs": list(_names(c, "INPUTS")),
            "outputs": list(_names(c, "OUTPUTS")), "attributes": list(_names(c, "ATTRIBUTES"))}


def _names(c, attr) -> tuple[str, ...]:
    value = _get(c, attr)
    if isinstance(value, dict):
        return tuple(value)
    return tuple(getattr(v, "name", v) for v in value)


def attribute_values(settings: RayMarchSettings) -> dict:
    """Attribute name -> value for the node, in the contract's order."""
    c = contract()
    if hasattr(c, "attributes") and callable(c.attributes):
        return dict(c.attributes(settings))
    available = {
        "near": float(settings.near), "far": float(settings.far),
        "samples_coarse": int(settings.samples_coarse),
        "samples_fine": int(settings.samples_fine), "box_warp": float(settings.box_warp),
        "eg3d_plane_axes": int(settings.eg3d_plane_axes),
        "plane_axes": [int(i) for pair in settings.plane_axes for i in pair],
    }
    out = {}
    for name in _names(c, "ATTRIBUTES"):
        if name not in available:
            raise PluginContractError(f"the contract's attribute {name!r} is not one the "
                                      f"exporter knows ({', '.join(available)})")
        out[name] = available[name]
    return out


def _onnx_attr_kwargs(values: dict) -> dict:
    kwargs = {}
    for name, value in values.items():
        if isinstance(value, bool) or isinstance(value, int):
            kwargs[f"{name}_i"] = int(value)
        elif isinstance(value, float):
            kwargs[f"{name}_f"] = value
        elif isinstance(value, str):
            kwargs[f"{name}_s"] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            kwargs[f"{name}_i"] = list(value)
        elif isinstance(value, (list, tuple)):
            kwargs[f"{name}_f"] = [float(v) for v in value]
        else:
            raise PluginContractError(f"attribute {name!r} has an unsupported value {value!r}")
    return kwargs


def channels_last() -> bool:
    """Whether the contract's node takes the tri-plane channels last, ``[B, 3, P, P, C]``."""
    return str(getattr(contract(), "TRIPLANE_LAYOUT", "planar")) == "channels_last"


class RayMarchNode(torch.autograd.Function):
    """Forward: the reference ray marcher. Export: one ``DOMAIN::OP_TYPE`` node. ``triplane``
    in the node's layout (:func:`channels_last`)."""

    @staticmethod
    def forward(ctx, triplane, w1, b1, w2, b2, origins, directions, settings):
        if channels_last():
            triplane = triplane.permute(0, 1, 4, 2, 3)
        return raymarch_reference(triplane, Decoder(w1, b1, w2, b2), origins, directions,
                                  settings)

    @staticmethod
    def symbolic(g, triplane, w1, b1, w2, b2, origins, directions, settings):
        c = contract()
        domain, op_type = custom_op_id()
        given = dict(zip(KNOWN_INPUTS, (triplane, w1, b1, w2, b2, origins, directions)))
        inputs = []
        for name in _names(c, "INPUTS"):
            if name not in given:
                raise PluginContractError(f"the contract's input {name!r} is not one the "
                                          f"exporter knows ({', '.join(KNOWN_INPUTS)})")
            inputs.append(given[name])
        outputs = _names(c, "OUTPUTS")
        unknown = [n for n in outputs if n not in KNOWN_OUTPUTS + SCRATCH_OUTPUTS]
        if unknown:
            raise PluginContractError(f"the contract's output(s) {unknown} are not ones the "
                                      f"exporter knows ({', '.join(KNOWN_OUTPUTS)}, "
                                      f"{', '.join(SCRATCH_OUTPUTS)})")
        nodes = g.op(f"{domain}::{op_type}", *inputs, outputs=len(outputs),
                     **_onnx_attr_kwargs(attribute_values(settings)))
        nodes = nodes if isinstance(nodes, (list, tuple)) else (nodes,)
        b, r, _ = origins.type().sizes()
        channels = w2.type().sizes()[1] - 1
        shapes = {"features": [b, r, channels], "depth": [b, r], "opacity": [b, r]}
        if "workspace" in outputs:
            shapes["workspace"] = list(_get(c, "workspace_shape")(
                b, r, settings.samples_coarse, settings.samples_fine))
        for name, value in zip(outputs, nodes):
            value.setType(origins.type().with_sizes(shapes[name]))
        by_name = dict(zip(outputs, nodes))
        missing = [n for n in KNOWN_OUTPUTS if n not in by_name]
        if missing:
            raise PluginContractError(f"the contract's node lacks output(s) {missing}")
        return tuple(by_name[n] for n in KNOWN_OUTPUTS)


def render_plugin(renderer, triplane: torch.Tensor, camera: torch.Tensor):
    """``TriplaneRenderer.forward`` with the ray march as the custom node: triplane
    ``[1, 3, C, P, P]`` (float32 or float16: the node takes it in that precision),
    camera ``[1, 25]`` -> features ``[1, F, r, r]`` (triplane dtype), depth ``[1, 1, r, r]``
    float32."""
    from export3d.camera import rays

    res = renderer.resolution
    origins, directions = rays(camera.float(), res)
    dec = renderer.decoder.weights()
    planes = triplane if triplane.dtype in (torch.float32, torch.float16) else triplane.float()
    if channels_last():
        planes = planes.permute(0, 1, 3, 4, 2)  # an ONNX Transpose to [B, 3, P, P, C]
    features, depth, _ = RayMarchNode.apply(
        planes, dec.w1.float(), dec.b1.float(), dec.w2.float(), dec.b2.float(),
        origins, directions, renderer.settings)
    channels = dec.w2.shape[1] - 1
    image = features.transpose(1, 2).reshape(1, channels, res, res).to(triplane.dtype)
    return image, depth.reshape(1, 1, res, res)
