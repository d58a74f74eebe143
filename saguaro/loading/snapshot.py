"""A built decoder as flat tensors plus a JSON description, and back, for the packed-weight cache.

What is saved is exactly what the forward reads: each linear as the object the quantize
transform left (packed codes, scales, biases, a head's kept token ids), so a load does no
conversion at all. Objects are rebuilt without running their constructors; only the classes
listed here may appear, so an unknown linear type makes a model uncacheable, never misloaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from saguaro.model.config import ModelConfig
from saguaro.model.decoder import TORCH_OPS, Decoder, Layer, Linear
from saguaro.model.head_subset import SubsetHead
from saguaro.model.rope import Rotary
from saguaro.quant.linear import Int4Linear, Int8Linear
from saguaro.quant.native.linear import NativeInt4Linear, NativeInt6Linear, NativeInt8Linear

CLASSES = {cls.__name__: cls for cls in (Layer, Linear, SubsetHead, Int4Linear, Int8Linear, NativeInt4Linear,
                                         NativeInt6Linear, NativeInt8Linear)}
PLAIN = (bool, int, float, str, type(None))
DECODER_FIELDS = {"cfg", "device", "dtype", "embed", "final_norm", "lm_head", "layers", "rotary", "ops"}


class Uncacheable(ValueError):
    """The decoder holds something the snapshot cannot describe (a new linear type, say)."""


class _Tensors:
    """Names tensors once each: the same view twice (a tied head) is stored once, and another view
    of a storage already stored is copied (safetensors refuses tensors that share memory)."""

    def __init__(self):
        self.named: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, str] = {}
        self._storages: set[int] = set()

    def put(self, t: torch.Tensor) -> str:
        if t.device.type != "cpu":
            raise Uncacheable(f"a tensor on {t.device}: only CPU models are cached")
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in self._views:
            return self._views[view]
        if view[0] in self._storages or not t.is_contiguous():
            t = t.contiguous().clone()
        self._storages.add(view[0])
        name = f"t{len(self.named)}"
        self.named[name] = t
        self._views[view] = name
        return name


def _describe(obj: Any, tensors: _Tensors) -> dict:
    cls = type(obj).__name__
    if CLASSES.get(cls) is not type(obj):
        raise Uncacheable(f"cannot cache a {type(obj).__qualname__}")
    spec: dict[str, Any] = {"class": cls, "tensors": {}, "values": {}, "objects": {}}
    for attr, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            spec["tensors"][attr] = tensors.put(value)
        elif isinstance(value, PLAIN):
            spec["values"][attr] = value
        else:
            spec["objects"][attr] = _describe(value, tensors)
    return spec


def _rebuild(spec: dict, tensors: dict[str, torch.Tensor]) -> Any:
    cls = CLASSES.get(spec["class"])
    if cls is None:
        raise Uncacheable(f"unknown class {spec['class']!r} in a snapshot")
    obj = cls.__new__(cls)
    obj.__dict__.update(spec["values"])
    obj.__dict__.update({attr: tensors[name] for attr, name in spec["tensors"].items()})
    obj.__dict__.update({attr: _rebuild(sub, tensors) for attr, sub in spec["objects"].items()})
    return obj


def config_to_json(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_json(data: dict) -> ModelConfig:
    scaling = data.get("rope_scaling")
    return ModelConfig(**{**data, "rope_scaling": tuple(tuple(kv) for kv in scaling) if scaling else None})


def describe_decoder(decoder: Decoder) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-able description, named tensors) of a CPU decoder as the forward reads it."""
    if set(vars(decoder)) != DECODER_FIELDS:  # a field added to Decoder must be added here too
        raise Uncacheable(f"the decoder's fields {sorted(vars(decoder))} are not {sorted(DECODER_FIELDS)}")
    tensors = _Tensors()
    spec = {
        "config": config_to_json(decoder.cfg),
        "dtype": str(decoder.dtype).removeprefix("torch."),
        "embed": tensors.put(decoder.embed),
        "final_norm": tensors.put(decoder.final_norm),
        "lm_head": _describe(decoder.lm_head, tensors),
        "layers": [_describe(layer, tensors) for layer in decoder.layers],
        "ops": "torch" if decoder.ops is TORCH_OPS else "native",
    }
    return spec, tensors.named


def rebuild_decoder(spec: dict, tensors: dict[str, torch.Tensor]) -> Decoder:
    """The decoder `describe_decoder` described; native ops need the kernels loaded."""
    cfg = config_from_json(spec["config"])
    dtype = getattr(torch, spec["dtype"])
    decoder = Decoder.__new__(Decoder)
    decoder.cfg, decoder.device, decoder.dtype = cfg, torch.device("cpu"), dtype
    decoder.embed, decoder.final_norm = tensors[spec["embed"]], tensors[spec["final_norm"]]
    decoder.lm_head = _rebuild(spec["lm_head"], tensors)
    decoder.layers = [_rebuild(layer, tensors) for layer in spec["layers"]]
    decoder.rotary = Rotary(cfg, decoder.device, dtype)
    if spec["ops"] == "native":
        from saguaro.quant.native import glue

        decoder.ops = glue.native_ops()
    else:
        decoder.ops = TORCH_OPS
    return decoder
