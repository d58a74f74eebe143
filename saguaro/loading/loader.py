"""One entry point from a model reference to a ready decoder and tokenizer.

A reference is a bundled model name, a `.gguf` file, an HF folder, a hub id, or `random:<shape>`
(random weights at a real model's shape, for benchmarks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from saguaro.errors import ModelLoadError
from saguaro.loading import bundled, gguf_file, packed_cache, random_ref
from saguaro.loading.gguf_grids import native_grids, source_bits
from saguaro.loading.gguf_reader import GGUFFile
from saguaro.loading.weights import fuse_weights, fused_matrix
from saguaro.model.config import ModelConfig
from saguaro.model.cpu_packing import pack_for_cpu
from saguaro.model.decoder import Decoder
from saguaro.model.head_subset import frequent_tokens, restrict_head
from saguaro.quant.transform import check_scheme, quantize_decoder, resolve_scheme
from saguaro.tokenizer import Tokenizer

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


@dataclass
class LoadedModel:
    decoder: Decoder
    tokenizer: Tokenizer
    config: ModelConfig
    source: str
    gguf: gguf_file.GGUFWeights | None = None  # the file's tensors, when the weights came from one
    quantization: str = "none"  # the scheme applied: none, int8 or int4
    cache_key: str | None = None  # its packed-cache key: what it is, on this machine's kernels (None: not cached)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in (None, "auto"):
        resolved = auto_dtype(device)
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if resolved == torch.float16 and device.type == "cpu":
        raise ModelLoadError("float16 is for CUDA; use bfloat16 or float32 on CPU")
    return resolved


def auto_dtype(device: torch.device) -> torch.dtype:
    """The fastest precision the device runs well: bf16 on CPUs (the int4/int8 kernels want bf16
    activations, and bf16 matmuls beat float32 with or without AVX-512), bf16 or fp16 on CUDA."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def load_model(ref: str, device: str = "cpu", dtype: str | torch.dtype = "auto",
               head_tokens: int | None = None, quantize: str | None = "auto", draft: bool = False) -> LoadedModel:
    """`head_tokens` keeps only that many frequent tokens in the LM head (for drafts);
    `quantize` is auto, none, int8 or int4 (saguaro.quant.transform); a `draft` quantizes its
    head like its layers."""
    scheme = check_scheme(quantize)
    dev = torch.device(device)
    if scheme == "auto" and (dev.type != "cpu" or resolve_dtype(dtype, dev) == torch.float32):
        scheme = "none"  # float32 is the reference-parity path; the kernels run on CPU only
    entry = _cache_entry(ref, dev, dtype, head_tokens, scheme, draft)
    cached = packed_cache.load(entry) if entry is not None else None
    if cached is not None:
        decoder, tokenizer, quantization = cached
        loaded = LoadedModel(decoder, tokenizer, decoder.cfg, ref, quantization=quantization)
    else:
        loaded = _load(ref, device, dtype, scheme)
        if head_tokens is not None and head_tokens < loaded.config.vocab_size:
            tok = loaded.tokenizer
            always = set(tok.eos_token_ids) | set(tok.special_ids)
            restrict_head(loaded.decoder, frequent_tokens(loaded.config.vocab_size, head_tokens, always))
        loaded.quantization = _quantize(loaded, scheme, same_head=draft)
        loaded.gguf = None  # it maps the whole file: let it go
        if entry is not None:
            packed_cache.save(entry, loaded.decoder, loaded.tokenizer, loaded.quantization, loaded.source)
    pack_for_cpu(loaded.decoder)
    loaded.cache_key = None if entry is None else entry.key
    return loaded


def _cache_entry(ref: str, dev: torch.device, dtype, head_tokens: int | None, scheme: str,
                 draft: bool) -> packed_cache.Entry | None:
    """The packed-weight cache entry of this load (CPU models from a file, a folder or the bundled
    pair), checked for bad arguments first so that they fail as they would uncached."""
    if random_ref.is_random_ref(ref) or dev.type != "cpu":
        return None
    return packed_cache.entry_for(ref, dev, resolve_dtype(dtype, dev), head_tokens, scheme, draft)


def _quantize(loaded: LoadedModel, scheme: str, same_head: bool) -> str:
    bits, grids, dense = {}, {}, None
    if (weights := loaded.gguf) is not None:
        bits = source_bits(weights.named)
        if resolve_scheme(scheme, bits) == "int4":
            grids = native_grids(weights.named, weights.cfg)
        decoder = loaded.decoder
        dense = lambda names: fused_matrix(weights.float, names, decoder.device, decoder.dtype)  # noqa: E731
    return quantize_decoder(loaded.decoder, scheme, bits, grids, same_head, dense)


def _load(ref: str, device: str, dtype, scheme: str = "none") -> LoadedModel:
    """`scheme`: the quantization that will follow; a GGUF to be quantized on CPU leaves its
    layers' matrices unread until then."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    torch_dtype = resolve_dtype(dtype, dev)
    path = Path(os.path.expanduser(ref))
    if random_ref.is_random_ref(ref):
        cfg, names, get, tokenizer = random_ref.load_random(ref, dev, torch_dtype)
        return LoadedModel(_decoder(cfg, fuse_weights(cfg, names, get, dev, torch_dtype), dev, torch_dtype),
                           tokenizer, cfg, ref)
    if ref in bundled.BUNDLED:
        return _load_gguf(bundled.bundled_gguf(ref), dev, torch_dtype, scheme, source=ref)
    if path.is_dir():
        return _load_folder(path, dev, torch_dtype, source=str(path))
    if path.is_file() or ref.endswith(".gguf"):
        return _load_gguf(path, dev, torch_dtype, scheme)
    if _looks_like_hub_id(ref):
        return _load_folder(_download(ref), dev, torch_dtype, source=ref)
    raise ModelLoadError(
        f"unknown model {ref!r}: not a bundled name ({', '.join(bundled.BUNDLED)}), "
        "a .gguf file, a model folder, a hub id, or random:<shape>"
    )


def _decoder(cfg: ModelConfig, weights: dict, device, dtype) -> Decoder:
    return Decoder(cfg, weights, device, dtype)


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "tokenizer*"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except ImportError:
        raise ModelLoadError("loading from the hub needs huggingface_hub installed") from None
    except Exception as e:
        raise ModelLoadError(f"could not fetch {repo_id!r} from the hub (offline?): {e}") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model folder lacks {path.name}: {path.parent}") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"invalid JSON in {path}: {e}") from None


def _load_folder(folder: Path, device, dtype, source: str) -> LoadedModel:
    from safetensors import safe_open

    cfg = ModelConfig.from_hf(_read_json(folder / "config.json"))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {folder}")
    handles, where = [], {}
    try:
        for f in files:
            h = safe_open(str(f), framework="pt")
            handles.append(h)
            where.update({name: h for name in h.keys()})
    except Exception as e:
        raise ModelLoadError(f"unreadable safetensors file in {folder}: {e}") from None
    weights = fuse_weights(cfg, set(where), lambda n: where[n].get_tensor(n), device, dtype)
    tokenizer = Tokenizer.from_folder(folder)
    log.info("loaded %s (%s, %d layers) as %s on %s", source, cfg.model_type, cfg.num_layers, dtype, device)
    return LoadedModel(_decoder(cfg, weights, device, dtype), tokenizer, cfg, source)


def _gguf_parts(path: Path):
    from saguaro.loading.gguf_tokenizer import tokenizer_files_from_gguf

    reader = GGUFFile(path)
    hf_cfg = gguf_file.hf_config(reader)
    tok_json, tok_cfg = tokenizer_files_from_gguf(reader)
    return reader, hf_cfg, Tokenizer.from_files(tok_json, tok_cfg, extra_eos_ids=_eos_ids(hf_cfg))


def _eos_ids(hf_cfg: dict) -> tuple[int, ...]:
    eos = hf_cfg.get("eos_token_id")
    return () if eos is None else (int(eos),)


def _load_gguf(path: Path, device, dtype, scheme: str, source: str | None = None) -> LoadedModel:
    reader, hf_cfg, tokenizer = _gguf_parts(path)
    cfg = ModelConfig.from_hf(hf_cfg)
    weights = gguf_file.GGUFWeights(reader, hf_cfg)
    # Quantized on CPU, the layers' matrices become meta tensors here: the quantize transform
    # reads them from their blocks, so a Q4_K_M file is never dequantized whole.
    from_blocks = device.type == "cpu" and resolve_scheme(scheme, source_bits(weights.named)) != "none"
    fused = fuse_weights(cfg, set(weights.named), weights.float, device, dtype,
                         weights.shapes() if from_blocks else None)
    log.info("loaded %s (%s, %d layers) as %s on %s", path, cfg.model_type, cfg.num_layers, dtype, device)
    return LoadedModel(_decoder(cfg, fused, device, dtype), tokenizer, cfg, source or str(path), gguf=weights)


def bundled_folder(name: str) -> Path:
    """The bundled model converted once to an HF-style folder (float32 safetensors) in the cache,
    for the benchmarks' transformers baseline; Saguaro itself loads the GGUF directly. A partial
    or corrupt conversion (saguaro.loading.manifest) is rebuilt."""
    from saguaro.loading.manifest import manifest_problem, write_manifest

    spec = bundled.BUNDLED[name]
    folder = bundled.cache_dir() / "models" / f"{name}-{spec.sha256[:12]}"
    problem = manifest_problem(folder) if folder.exists() else None
    if folder.exists() and problem is None:
        return folder
    if problem is not None:
        log.warning("the converted %s in %s is unusable (%s); converting it again", name, folder, problem)
    gguf_path = bundled.bundled_gguf(name)
    log.info("converting %s to float32 safetensors in %s (once)", name, folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write_hf_folder(gguf_path, tmp)
            write_manifest(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        stale = f"; or delete {folder} so it is converted again" if problem is not None else ""
        raise bundled.cache_write_error(folder, e, stale) from None
    return folder


def write_hf_folder(gguf_path: Path, folder: Path) -> None:
    from safetensors.torch import save_file

    reader, hf_cfg, tokenizer = _gguf_parts(gguf_path)
    (folder / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    tokenizer.save(folder)
    weights = gguf_file.GGUFWeights(reader, hf_cfg)
    save_file({name: weights.float(name) for name in weights.named}, str(folder / "model.safetensors"))
