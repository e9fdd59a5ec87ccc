"""Stage 2: MobileNetV2 features for a collection, chunked, resumable and cached.

Each chunk of features is written atomically as soon as it is computed, so a
killed run resumes from its last complete chunk; chunk boundaries fall on batch
boundaries, so a resumed run gives bit-identical features to an uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import stl10
from .artifacts import (
    cache_lock,
    commit_staged,
    staging_dir,
    library_versions,
    load_npy,
    read_manifest,
    sha256_file,
    write_json,
    write_manifest,
    write_npy,
    write_npy_chunks,
)
from .errors import EnvironmentFailure, InputError, IntegrityError, MissingArtifactError, WeightsError
from .paths import features_dir

DIM = 1280
MAKE_CMD = "stl10sim extract"
CHUNK_IMAGES = 2048
SEED = 0
IMAGENET = "IMAGENET1K_V2"
DEVICES = ("auto", "cpu", "cuda", "mps")


# ---------------------------------------------------------------- model


def weights_identity(weights: str) -> str:
    """A string that pins down which weights made a feature: recorded in manifests."""
    if weights == "imagenet":
        return f"imagenet:{IMAGENET}"
    if weights == "none":
        return f"none:seed={SEED}"
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {weights} does not exist: pass imagenet, none or a readable .pth file")
    try:
        return f"file:{sha256_file(path)}"
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {weights}: {exc.strerror}") from exc


def _load_state_dict(weights: str) -> dict[str, Any] | None:
    import torch

    if weights == "none":
        return None
    if weights == "imagenet":
        import urllib.error

        from torchvision.models import MobileNet_V2_Weights

        spec = MobileNet_V2_Weights[IMAGENET]
        try:
            return spec.get_state_dict(progress=True, check_hash=True)
        except (urllib.error.URLError, OSError) as exc:
            folder = Path(torch.hub.get_dir()) / "checkpoints"
            reason = getattr(exc, "reason", None) or exc
            raise EnvironmentFailure(
                f"cannot download the ImageNet weights ({reason}): put {spec.url.rsplit('/', 1)[-1]} "
                f"in {folder}, or pass --weights PATH"
            ) from exc
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            loaded = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise WeightsError(f"cannot read weights file {weights}: not a PyTorch state dict ({exc.__class__.__name__})") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"weights file {weights} does not hold a state dict of tensors")
    return loaded


def build_model(weights: str) -> Any:
    """torchvision's mobilenet_v2 in eval mode with the requested weights."""
    import torch
    from torchvision.models import mobilenet_v2

    state = _load_state_dict(weights)
    torch.manual_seed(SEED)  # --weights none is a seeded, deterministic random init
    model = mobilenet_v2(weights=None)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            model_keys, file_keys = set(model.state_dict()), set(state)
            raise WeightsError(
                f"weights file {weights} does not fit mobilenet_v2: {len(model_keys - file_keys)} keys missing, "
                f"{len(file_keys - model_keys)} unexpected, or shapes differ"
            ) from exc
    return model.eval()


def fold_batch_norms(module: Any) -> Any:
    """Fold every eval-mode BatchNorm into the convolution before it, in place.

    Same function up to float rounding, and one pass over every activation fewer: 1.2x to 1.9x the
    channels-last throughput on a 2-core CPU (README).
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    children = list(module.named_children())
    for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
        if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, torch.nn.Identity())
    for _, child in module.named_children():
        fold_batch_norms(child)
    return module


def build_preprocess(image_size: int) -> Any:
    """The weights' own transform (resize 232, centre crop 224, ImageNet normalisation), scaled to ``image_size``."""
    from torchvision.transforms._presets import ImageClassification

    return ImageClassification(crop_size=image_size, resize_size=round(image_size * 232 / 224))


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here; use --device auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: Apple's MPS is not available here; use --device auto or cpu")
    return device


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU computes bfloat16 natively."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is bf16 on a CPU with native bfloat16, fp32 elsewhere.

    bf16 passed our fidelity bar on a CPU (cosine >= 0.995 and top-10 overlap >= 0.9 against fp32, README)
    and was faster there; reduced precision on GPUs has not been measured, so ``auto`` keeps fp32 on them.
    """
    if precision == "auto":
        return "bf16" if device == "cpu" and cpu_has_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise InputError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    if precision == "bf16" and device == "cpu" and not cpu_has_bf16():
        raise InputError("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); use fp32")
    return precision


def query_precision(stored: str, device: str) -> str:
    """The precision to embed a query image in: the collection's where this machine runs it natively, else fp32.

    A cache extracted in bf16 stays searchable from a CPU without bfloat16: fp32 features differ from bf16 ones
    by less than bf16 rounding (cosine 0.999, README), so the query still lands among the right images.
    """
    device = pick_device(device)
    try:
        return resolve_precision(stored, device)
    except InputError:
        return "fp32"


def default_batch_size(precision: str, device: str, image_size: int = 224) -> int:
    """Measured on a 2-core AVX-512 CPU (README): small batches stay in cache; GPUs want large ones.

    At 224 px fp32 peaked at batch 4 and bf16 at 8; smaller inputs take proportionally more images
    per batch (rounded up to a power of two: 32 and 64 at 96 px, which is also what peaked there).
    """
    if device in ("cuda", "mps"):
        return 64
    base = 4 if precision == "fp32" else 8
    wanted = base * (224 / image_size) ** 2
    return int(min(64, max(1, 2 ** math.ceil(math.log2(wanted)))))


class FeatureModel:
    """MobileNetV2 up to global average pooling: uint8 images in, L2-normalised 1280-D features out.

    Images are resized and normalised as whole tensors (no per-image PIL round trip); the network,
    its BatchNorms folded into the convolutions, runs channels-last under ``torch.inference_mode``
    in the chosen precision; pooling and normalisation happen in float32.
    """

    name = "mobilenet_v2"

    def __init__(self, weights: str = "imagenet", image_size: int = 224, device: str = "auto",
                 precision: str = "fp32", fold_norms: bool = True) -> None:
        import torch

        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.weights_id = weights_identity(weights)
        self.image_size = image_size
        self.transform = build_preprocess(image_size)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        model = build_model(weights)
        if fold_norms:  # only the extraction benchmark turns this off, to show what folding buys
            model = fold_batch_norms(model)
        model = model.to(self.device, memory_format=torch.channels_last)
        self.model = model.to(self.dtype)
        self._torch = torch

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Embed uint8 ``(n, 3, H, W)`` images."""
        torch = self._torch
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            x = self.transform(batch).to(self.dtype).contiguous(memory_format=torch.channels_last)
            pooled = torch.nn.functional.adaptive_avg_pool2d(self.model.features(x).float(), 1).flatten(1)
            out = pooled.cpu().numpy()
        return normalise(out)


def normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- stage


@dataclass(frozen=True)
class ExtractResult:
    folder: Path
    n: int
    seconds: float
    cached: bool
    resumed_chunks: int
    manifest: dict[str, Any]


def identity_params(split: str, limit: int | None, weights: str, image_size: int, precision: str = "fp32") -> dict[str, Any]:
    """The parameters that decide what the features are (and so when the index is stale)."""
    return {
        "model": FeatureModel.name,
        "split": split,
        "limit": limit,
        "weights": weights_identity(weights),
        "image_size": image_size,
        "precision": precision,
        "dim": DIM,
        "normalised": "l2",
    }


def load_manifest(cache_dir: Path) -> dict[str, Any]:
    return read_manifest(features_dir(cache_dir), stage="extract", make_cmd=MAKE_CMD)


def _cached(folder: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        manifest = read_manifest(folder, stage="extract", make_cmd=MAKE_CMD)
    except (MissingArtifactError, IntegrityError):
        return None
    if {k: manifest["params"].get(k) for k in params} != params:
        return None
    try:
        for name in manifest["artifacts"]:
            load_npy(folder, manifest, name, make_cmd=MAKE_CMD)
    except IntegrityError:
        return None
    return manifest


def extract(
    data_dir: Path,
    cache_dir: Path,
    *,
    split: str = "train+test",
    limit: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    weights: str = "imagenet",
    image_size: int = 224,
    chunk_size: int = CHUNK_IMAGES,
    precision: str = "auto",
    force: bool = False,
    wait: bool = True,
    progress: bool = True,
    on_wait: Any = None,
) -> ExtractResult:
    """Extract features for ``split`` into ``cache_dir/features``, resuming or reusing earlier work."""
    started = time.time()
    collection = stl10.open_collection(data_dir, split, limit)
    if collection.size == 0:
        raise InputError(f"split {split!r} has no images in {data_dir}")
    device = pick_device(device)
    precision = resolve_precision(precision, device)
    batch_size = batch_size or default_batch_size(precision, device, image_size)
    params = identity_params(split, limit, weights, image_size, precision)
    folder = features_dir(cache_dir)
    with cache_lock(cache_dir, wait=wait, on_wait=on_wait):
        if not force and (manifest := _cached(folder, params)) is not None:
            return ExtractResult(folder, manifest["n"], time.time() - started, True, 0, manifest)
        model = FeatureModel(weights, image_size, device, precision)
        chunk = max(1, chunk_size // batch_size) * batch_size  # whole batches: resumed runs stay bit-identical
        partial = folder / "partial"
        run = {**params, "n": collection.size, "batch_size": batch_size, "chunk": chunk, "device": model.device}
        if force or not _same_run(partial, run):
            shutil.rmtree(partial, ignore_errors=True)
        write_json(partial / "run.json", run)
        starts = range(0, collection.size, chunk)
        done = [s for s in starts if (partial / f"chunk_{s // chunk:06d}.npy").is_file()]
        bar = _progress(collection.size, progress, initial=sum(min(chunk, collection.size - s) for s in done))
        todo = [s for s in starts if s not in done]
        batches = [(lo, min(lo + batch_size, s + chunk, collection.size)) for s in todo
                   for lo in range(s, min(s + chunk, collection.size), batch_size)]
        parts: list[np.ndarray] = []
        for lo, hi in batches:  # a prefetch thread for the reads measured no gain (README)
            parts.append(model(collection.images(lo, hi)))
            bar.update(len(parts[-1]))
            if hi == collection.size or hi % chunk == 0:  # a chunk is complete: make it durable
                write_npy(partial / f"chunk_{(hi - 1) // chunk:06d}.npy", np.concatenate(parts))
                parts = []
        bar.close()
        staging = staging_dir(folder)
        # stream the chunks into one file: memory stays at one chunk even for the 100,000 unlabelled images
        write_npy_chunks(staging / "features.npy", (collection.size, DIM), np.float32,
                         (np.load(partial / f"chunk_{s // chunk:06d}.npy") for s in starts))
        write_npy(staging / "labels.npy", collection.labels())
        write_npy(staging / "ids.npy", np.arange(collection.size, dtype=np.int64))
        files = commit_staged(folder, staging)
        manifest = write_manifest(
            folder,
            stage="extract",
            params={**params, "weights_source": _weights_source(weights), "batch_size": batch_size, "device": model.device},
            files=files,
            inputs={"data_dir": str(data_dir), "verified_md5": bool((stl10.verification_record(data_dir) or {}).get("verified_md5"))},
            n=collection.size,
            started=started,
            versions=library_versions("torch", "torchvision"),
            extra={"class_names": stl10.read_class_names(collection.root), "parts": dict(zip(collection.parts, collection.counts))},
        )
        shutil.rmtree(partial, ignore_errors=True)
        return ExtractResult(folder, collection.size, time.time() - started, False, len(done), manifest)


def _same_run(partial: Path, run: dict[str, Any]) -> bool:
    import json

    try:
        return json.loads((partial / "run.json").read_text()) == run
    except (OSError, ValueError):
        return False


def _progress(total: int, enabled: bool, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="extract", disable=not enabled, file=sys.stderr)


def _weights_source(weights: str) -> str:
    """How to load the same weights again (for ``query --image``): a keyword or an absolute path."""
    return weights if weights in ("imagenet", "none") else str(Path(weights).resolve())
