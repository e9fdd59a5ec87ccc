"""The library's one query entry point, as Python callers use it."""

from __future__ import annotations

import numpy as np
import pytest

from stl10_similarity import ParameterError, Session
from stl10_similarity.errors import InputError
from stl10_similarity.params import IndexParams, SearchParams


@pytest.fixture(scope="module")
def session(built_cache):
    return Session.open(built_cache)


def test_query_by_id_is_the_cli_default(session):
    result = session.query(image_id=42)
    assert len(result.results) == SearchParams.k and result.params["method"] == "auto"
    assert result.params["answered_by"] == "exact"  # 100 images: a scan is cheapest and always right
    assert result.params["candidates"] == SearchParams.candidates  # one default for every caller
    assert 42 not in [m.id for m in result.results]
    assert set(result.timing_ms) == {"search", "describe", "load"}


@pytest.mark.parametrize("kwargs, message", [
    ({}, "image_id or image must be given, and not both"),
    ({"image_id": 1, "image": b"x"}, "image_id or image must be given, and not both"),
    ({"image_id": 100}, "image_id 100 is out of range: the collection has 100 images (ids 0..99)"),
    ({"image_id": 1, "k": 0}, "k must be at least 1, got 0"),
    ({"image_id": 1, "method": "fastest"}, "method 'fastest' is not one of auto, rerank, forest, exact, forest-query"),
    ({"image_id": 1, "candidates": 0}, "candidates must be at least 1, got 0"),
    ({"image": np.zeros((5, 5), np.uint8)}, "image array must be uint8 (3, H, W) or (H, W, 3), got uint8 (5, 5)"),
    ({"image": 3.5}, "image must be a path, bytes or a uint8 array, got float"),
])
def test_bad_queries_raise_parameter_errors_in_python_terms(session, kwargs, message):
    with pytest.raises(ParameterError) as info:
        session.query(**kwargs)
    assert str(info.value) == message


def test_an_image_as_array_bytes_or_path_finds_itself(session, tmp_path):
    from PIL import Image

    pixels = session.images([9])[0]
    hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    path = tmp_path / "nine.png"
    Image.fromarray(hwc).save(path)
    for image in (pixels, hwc, path.read_bytes(), path, str(path)):
        result = session.query(image=image, k=1, method="exact")
        assert result.results[0].id == 9 and result.results[0].cosine > 0.99
        assert "embed" in result.timing_ms and result.query.id is None
    with pytest.raises(InputError, match="uploaded image is empty"):
        session.query(image=b"")


def test_grid_is_png_bytes_and_optionally_a_file(session, tmp_path):
    result = session.query(image_id=3, k=4)
    png = session.grid(result, tmp_path / "g.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "g.png").read_bytes() == png


def test_parameter_objects_validate_on_creation():
    with pytest.raises(ParameterError) as info:
        IndexParams(num_perm=100, trees=8)
    assert str(info.value) == "num_perm (100) must be a multiple of trees (8)"
    from stl10_similarity.cli import flag

    assert info.value.render(flag) == "--num-perm (100) must be a multiple of --trees (8)"
    with pytest.raises(ParameterError):
        IndexParams(basis="whitened")
    with pytest.raises(ParameterError):
        SearchParams(k=True)  # a bool is not a count
