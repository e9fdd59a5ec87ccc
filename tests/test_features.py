"""Feature extraction: the fast input path, every precision and device this machine has, offline weights."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke

from stl10_similarity.cli import main
from stl10_similarity.ingest.model import FeatureModel, cpu_has_bf16, default_batch_size, pick_device, resolve_precision
from stl10_similarity.sources import stl10

PRECISIONS = ["auto", "fp32"] + (["bf16"] if cpu_has_bf16() else [])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_every_available_precision_and_device(tmp_path, archive, precision, device):
    cache = str(tmp_path / "c")
    invoke("-q", "download", "--archive", str(archive), "--no-verify", "--cache-dir", cache)
    result = invoke("-q", "extract", "--weights", "none", "--image-size", "64", "--limit", "24", "--precision", precision,
                    "--device", device, "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "c" / "features" / "manifest.json").read_text())
    expected_device = pick_device(device)  # auto: a GPU where there is one; the suite runs on both
    auto = "bf16" if expected_device == "cpu" and cpu_has_bf16() else "fp32"
    assert manifest["params"]["device"] == expected_device
    assert manifest["params"]["precision"] == (auto if precision == "auto" else precision)
    feats = np.load(tmp_path / "c" / "features" / "features.npy")
    assert feats.shape == (24, 1280) and feats.dtype == np.float32
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5) and (feats >= 0).all()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_reduced_precision_stays_close_to_fp32(tmp_path, precision="bf16"):
    from stl10_fixture import write_stl10

    write_stl10(tmp_path)
    images = stl10.open_source(tmp_path, "train").images(0, 16)
    a = FeatureModel("none", 64, "cpu", "fp32")(images)
    b = FeatureModel("none", 64, "cpu", precision)(images)
    assert float(np.mean(np.sum(a * b, axis=1))) > 0.99


def test_batch_size_does_not_change_which_images_are_embedded(built_cache):
    collection = stl10.open_source(built_cache / "data", "train+test")
    model = FeatureModel("none", 64, "cpu", "fp32")
    one = np.concatenate([model(collection.images(i, i + 1)) for i in range(8)])
    batch = model(collection.images(0, 8))
    assert np.allclose(one, batch, atol=1e-5)


def test_default_batch_sizes():
    assert default_batch_size("fp32", "cpu", 224) == 4 and default_batch_size("bf16", "cpu", 224) == 8
    assert default_batch_size("fp32", "cpu", 96) == 32 and default_batch_size("bf16", "cpu", 96) == 64
    assert default_batch_size("fp32", "cpu", 1024) == 1 and default_batch_size("bf16", "cpu", 32) == 64
    assert default_batch_size("fp32", "cuda", 224) == 64


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    from stl10_similarity.ingest import model as features

    monkeypatch.setattr(features, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "fp32" and resolve_precision("auto", "mps") == "fp32"
    monkeypatch.setattr(features, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"


def test_folding_batch_norms_keeps_the_features():
    """With non-trivial BatchNorm statistics, the folded network computes the same features."""
    import torch

    from stl10_similarity.ingest.model import build_model, fold_batch_norms

    model = build_model("none")
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    x = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.inference_mode():
        before = model.features(x)
        folded = fold_batch_norms(model)
        after = folded.features(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5)


def test_imagenet_weights_offline_say_where_to_put_them(built_cache, monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = CliRunner().invoke(main, ["extract", "--weights", "imagenet", "--force", "--cache-dir", str(built_cache)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "mobilenet_v2-7ebf99e0.pth" in lines[0] and "--weights PATH" in lines[0]
    assert str(tmp_path.parent) in lines[0] or "checkpoints" in lines[0]


def test_local_weights_file_is_used_and_recorded(tmp_path, archive):
    import torch
    from torchvision.models import mobilenet_v2

    weights = tmp_path / "w.pth"
    torch.manual_seed(5)
    torch.save(mobilenet_v2().state_dict(), weights)
    cache = str(tmp_path / "c")
    invoke("-q", "download", "--archive", str(archive), "--no-verify", "--cache-dir", cache)
    assert invoke("-q", "extract", "--weights", str(weights), "--image-size", "64", "--limit", "10",
                  "--cache-dir", cache).exit_code == 0
    params = json.loads((tmp_path / "c" / "features" / "manifest.json").read_text())["params"]
    assert params["weights"].startswith("file:") and params["weights_source"] == str(weights)
