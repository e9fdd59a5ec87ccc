"""The feature model: MobileNetV2 weights, device, precision and batch policy.

uint8 images in, L2-normalised 1280-D features out. The extract stage (``extract.py``) and
``query --image`` both embed through :class:`FeatureModel`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity.errors import EnvironmentFailure, ParameterError, WeightsError
from stl10_similarity.store.artifacts import sha256_file

SEED = 0
IMAGENET = "IMAGENET1K_V2"


# ---------------------------------------------------------------- model


def weights_identity(weights: str) -> str:
    """A string that pins down which weights made a feature: recorded in manifests."""
    if weights == "imagenet":
        return f"imagenet:{IMAGENET}"
    if weights == "none":
        return f"none:seed={SEED}"
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {weights} does not exist: give {{weights}} imagenet, none or a readable .pth file",
                           options=("weights",))
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
                f"in {folder}, or pass {{weights=PATH}}", options=("weights=PATH",)
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
    channels-last throughput on a 2-core CPU (docs/performance.md).
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


def resize_side(image_size: int) -> int:
    """The side the weights' transform resizes to before its centre crop: 232 for 224 px input."""
    return round(image_size * 232 / 224)


def build_preprocess(image_size: int) -> Any:
    """The weights' own transform (resize 232, centre crop 224, ImageNet normalisation), scaled to ``image_size``."""
    from torchvision.transforms._presets import ImageClassification

    return ImageClassification(crop_size=image_size, resize_size=resize_side(image_size))


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", "cuda: no CUDA GPU is available here; use auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError("device", "mps: Apple's MPS is not available here; use auto or cpu")
    return device


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

    bf16 passed our fidelity bar on a CPU (cosine >= 0.995 and top-10 overlap >= 0.9 against fp32, docs/performance.md)
    and was faster there; reduced precision on GPUs has not been measured, so ``auto`` keeps fp32 on them.
    """
    if precision == "auto":
        return "bf16" if device == "cpu" and cpu_has_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ParameterError("precision", "fp16 needs a GPU; on the CPU use bf16 or fp32")
    if precision == "bf16" and device == "cpu" and not cpu_has_bf16():
        raise ParameterError("precision", "bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); use fp32")
    return precision


def query_precision(stored: str, device: str) -> str:
    """The precision to embed a query image in: the collection's where this machine runs it natively, else fp32.

    A cache extracted in bf16 stays searchable from a CPU without bfloat16: fp32 features differ from bf16 ones
    by less than bf16 rounding (cosine 0.999, docs/performance.md), so the query still lands among the right images.
    """
    device = pick_device(device)
    try:
        return resolve_precision(stored, device)
    except ParameterError:
        return "fp32"


def default_batch_size(precision: str, device: str, image_size: int) -> int:
    """Measured on a 2-core AVX-512 CPU (docs/performance.md): small batches stay in cache; GPUs want large ones.

    At 224 px fp32 peaked at batch 4 and bf16 at 8; smaller inputs take proportionally more images
    per batch (rounded up to a power of two: 32 and 64 at 96 px, which is also what peaked there).
    """
    if device in ("cuda", "mps"):
        return 64
    base = 4 if precision == "fp32" else 8
    wanted = base * (224 / image_size) ** 2
    return int(min(64, max(1, 2 ** math.ceil(math.log2(wanted)))))


def run_settings(params: Any) -> tuple[str, str, int]:
    """The device, precision and batch size an extraction with these ``ExtractParams`` runs with (``auto`` resolved)."""
    device = pick_device(params.device)
    precision = resolve_precision(params.precision, device)
    return device, precision, params.batch_size or default_batch_size(precision, device, params.image_size)


class FeatureModel:
    """MobileNetV2 up to global average pooling: uint8 images in, L2-normalised 1280-D features out.

    Images are resized and normalised as whole tensors (no per-image PIL round trip); the network,
    its BatchNorms folded into the convolutions, runs channels-last under ``torch.inference_mode``
    in the chosen precision; pooling and normalisation happen in float32.
    """

    name = "mobilenet_v2"

    def __init__(self, weights: str, image_size: int, device: str, precision: str, fold_norms: bool = True) -> None:
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

    def stage(self, images: np.ndarray) -> Any:
        """uint8 ``(n, 3, H, W)`` images as a host tensor ready to copy to the device: page-locked on CUDA, so the
        copy runs without stalling the host. Extraction's reading thread calls this, off the compute path."""
        batch = self._torch.from_numpy(np.ascontiguousarray(images))
        return batch.pin_memory() if self.device == "cuda" else batch

    def __call__(self, images: Any) -> np.ndarray:
        """Embed uint8 ``(n, 3, H, W)`` images (an array, or what :meth:`stage` made of one)."""
        torch = self._torch
        with torch.inference_mode():
            batch = images if isinstance(images, torch.Tensor) else self.stage(images)
            batch = batch.to(self.device, non_blocking=True)
            x = self.transform(batch).to(self.dtype).contiguous(memory_format=torch.channels_last)
            pooled = torch.nn.functional.adaptive_avg_pool2d(self.model.features(x).float(), 1).flatten(1)
            out = pooled.cpu().numpy()
        return normalise(out)


def normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


