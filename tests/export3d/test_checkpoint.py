"""Checkpoints: round trip, mismatches named in one sentence, pickles refused."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from export3d import EXPRESSION_CODE_VERSION, get_config
from export3d.camera import orbit_path
from export3d.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from export3d.model import build_model


def test_round_trip_reproduces_outputs(tmp_path):
    # With an expression spread, which the config (not the weight table) carries.
    spread = tuple(float(v) for v in torch.linspace(0.05, 0.5, 64))
    model = build_model(get_config("tiny", expr_spread=spread), seed=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.generator.triplane_ema.normal_()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.config.expr_spread == spread
    image, expr, cam = torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, 64), orbit_path("yaw", 1)
    with torch.no_grad():
        a, b = model(image, expr, cam), loaded(image, expr, cam)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not list(tmp_path.glob("*.tmp"))


def _write(path, tensors, config, code=EXPRESSION_CODE_VERSION):
    save_file(tensors, str(path), metadata={"export3d_config": json.dumps(config.to_dict()),
                                            "expression_code": code})
    return path


def test_shape_mismatch_is_named(tmp_path):
    tiny = get_config("tiny")
    other = build_model(tiny.replace(clebs_basis=12)).state_dict()
    path = _write(tmp_path / "bad.safetensors", other, tiny)
    with pytest.raises(CheckpointError, match=r"clebs\.basis_weight.*\(64, 12\).*\(64, 10\)"):
        load_checkpoint(path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    tiny = get_config("tiny")
    state = dict(build_model(tiny).state_dict())
    del state["superres.block1.torgb.bias"]
    with pytest.raises(CheckpointError, match="lacks weight 'superres.block1.torgb.bias'"):
        load_checkpoint(_write(tmp_path / "a.safetensors", state, tiny))
    state = dict(build_model(tiny).state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected weight 'extra.weight'"):
        load_checkpoint(_write(tmp_path / "b.safetensors", state, tiny))


def test_expression_code_mismatch_is_refused(tmp_path):
    tiny = get_config("tiny")
    path = _write(tmp_path / "c.safetensors", build_model(tiny).state_dict(), tiny, code="3dmm-bfm")
    with pytest.raises(CheckpointError, match="expression code '3dmm-bfm'"):
        load_checkpoint(path)


def test_pickle_files_are_never_loaded(tmp_path):
    model = build_model(get_config("tiny"))
    torch_file = tmp_path / "model.pt"
    torch.save(model.state_dict(), torch_file)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(torch_file)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(raw)


@pytest.mark.parametrize("start", [b"\x80", b"PK"])
def test_a_checkpoint_whose_header_length_starts_like_a_pickle_loads(tmp_path, start):
    """The header's length comes first: one of 32 lengths (multiples of 8, as safetensors
    pads) begins with byte 0x80, a pickle's first byte, and one of 8192 with "PK", a zip's.
    Such checkpoints were refused as pickles (a CLeBS checkpoint of demo64 without a spread
    was one). Padding the metadata finds a real one of each."""
    model = build_model(get_config("tiny"))
    path = tmp_path / "m.safetensors"

    def first_bytes(pad: int) -> bytes:
        save_checkpoint(model, path, extra={"pad": "x" * pad})
        return path.read_bytes()[:2]

    base = int.from_bytes(first_bytes(0), "little")  # the header length's low 16 bits
    target = int.from_bytes(start.ljust(2, b"\x00"), "little")
    # the length grows by the padding, rounded up to 8: the first guess is (nearly) right
    pad = (target - base) % (0x100 if len(start) == 1 else 0x10000)
    while first_bytes(pad)[:len(start)] != start:
        pad += 1
        assert pad < 70_000
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and path.read_bytes()[8:9] == b"{"


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="unreadable header"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not written by export3d"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_tensors_read_without_the_safetensors_package(tmp_path, monkeypatch):
    # read_tensors, for machines without safetensors (load_checkpoint falls back to it): every
    # tensor of the shipped demo checkpoint bit-identical to safetensors' own reader, every
    # dtype the format names (as safetensors writes them), and a truncated file, one with bytes
    # after its tensors and one of a dtype it does not know refused in one sentence.
    import sys

    from safetensors.torch import load_file

    from export3d import demo
    from export3d.checkpoint import read_tensors

    ours, theirs = read_tensors(demo.checkpoint()), load_file(str(demo.checkpoint()))
    assert ours.keys() == theirs.keys() and len(ours) > 50
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    mixed = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2,
             dtype=torch.bfloat16), "i64": torch.arange(7), "u8": torch.arange(4).byte(),
             "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
             "empty": torch.zeros(0, 3), "f64": torch.randn(3, dtype=torch.float64),
             "i32": torch.arange(-3, 3, dtype=torch.int32), "i16": torch.arange(4).short(),
             "i8": torch.arange(-2, 2).char(), "u16": torch.arange(5).to(torch.uint16),
             "u32": torch.arange(5).to(torch.uint32), "u64": torch.arange(5).to(torch.uint64),
             "f8e4m3": torch.randn(6).to(torch.float8_e4m3fn),
             "f8e5m2": torch.randn(6).to(torch.float8_e5m2)}
    path = tmp_path / "mixed.safetensors"
    save_file(mixed, str(path))
    read = read_tensors(path)
    assert read.keys() == mixed.keys()
    for name, tensor in read.items():
        assert tensor.dtype == mixed[name].dtype and tensor.shape == mixed[name].shape, name
        assert (tensor.reshape(-1).view(torch.uint8).tolist()
                == mixed[name].reshape(-1).view(torch.uint8).tolist()), name
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_tensors(cut)
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(CheckpointError, match="do not cover its data exactly"):
        read_tensors(longer)
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(path.read_bytes().replace(b'"F64"', b'"C64"', 1))
    with pytest.raises(CheckpointError, match="as C64, which this reader does not know"):
        read_tensors(odd)
    # load_checkpoint takes it when the package is missing: the same model.
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    model = load_checkpoint(demo.checkpoint())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
