"""Keeping a collection up to date works for any source that stamps its items (``sources.StampedSource``), not
only folders: a source of the test's own, in memory, is updated incrementally with ids kept."""

from __future__ import annotations

import hashlib

import numpy as np
from stl10_fixture import make_images

from stl10_similarity.ingest.update import update_collection
from stl10_similarity.params import ExtractParams
from stl10_similarity.session import Session

PARAMS = ExtractParams(weights="none", image_size=64, batch_size=4, chunk_size=8, device="cpu", precision="fp32")


class Catalogue:
    """Images held in memory, each stamped by a version number its owner bumps when it edits the image."""

    kind = "catalogue"

    def __init__(self, items: dict[str, tuple[np.ndarray, int]], keys: list[str] | None = None) -> None:
        self.items = items
        self._keys = sorted(items) if keys is None else list(keys)
        self.unnamable: list[dict] = []
        self.digested: list[str] = []

    @property
    def size(self) -> int:
        return len(self._keys)

    @property
    def class_names(self) -> list[str]:
        return []

    def keys(self) -> list[str]:
        return list(self._keys)

    def labels(self) -> np.ndarray:
        return np.full(self.size, -1, np.int16)

    def images(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.items[k][0] for k in self._keys[start:stop]])

    def identity(self) -> dict:
        return {"catalogue": "test"}

    def describe(self) -> dict:
        return {"kind": self.kind}

    def stamp(self, key: str) -> tuple[int, int]:
        if key not in self.items:
            raise FileNotFoundError(key)
        return self.items[key][1], 0

    def digest(self, key: str) -> bytes:
        self.digested.append(key)
        return hashlib.sha256(self.items[key][0].tobytes()).digest()

    def subset(self, keys: list[str]) -> Catalogue:
        return Catalogue(self.items, keys)

    def labels_for(self, keys: list[str]) -> tuple[np.ndarray, list[str]]:
        return np.full(len(keys), -1, np.int16), []

    def home_identity(self) -> dict:
        return {"catalogue": "test"}

    def describe_items(self) -> str:
        return "the test catalogue"


def _features(home):
    folder = home / "features"
    return {name: np.load(folder / f"{name}.npy") for name in ("features", "ids", "keys", "versions")}


def test_a_source_of_our_own_is_kept_up_to_date(tmp_path):
    pictures = make_images(np.arange(8) % 2, seed=6)
    items = {f"item{i}": (pictures[i], 1) for i in range(6)}
    home = tmp_path / "home"
    first = update_collection(lambda: Catalogue(items), home, PARAMS)
    assert first.counts == {"new": 6, "changed": 0, "removed": 0, "unchanged": 0}
    before = _features(home)
    assert before["ids"].tolist() == [0, 1, 2, 3, 4, 5]

    items["item1"] = (pictures[6], 2)  # edited: new stamp, new content
    items["item2"] = (pictures[2], 2)  # touched: new stamp, same content
    del items["item3"]
    items["item9"] = (pictures[7], 1)
    listed = []

    def listing() -> Catalogue:
        listed.append(Catalogue(items))
        return listed[-1]

    second = update_collection(listing, home, PARAMS)
    assert second.counts == {"new": 1, "changed": 1, "removed": 1, "unchanged": 4}
    # the two whose stamp moved are compared by content, the new one's digest is recorded; no other is read
    assert sorted(listed[0].digested) == ["item1", "item2", "item9"]
    after = _features(home)
    assert after["keys"].tolist() == ["item0", "item1", "item2", "item4", "item5", "item9"]
    assert after["ids"].tolist() == [0, 1, 2, 4, 5, 6]  # kept, and never reused
    kept = [0, 2, 4, 5]  # rows of item0, item2, item4, item5 before
    assert np.array_equal(after["features"][[0, 2, 3, 4]], before["features"][kept])
    assert not np.allclose(after["features"][1], before["features"][1])  # item1 embedded again
    assert after["versions"].tolist() == [1, 2, 1, 1, 1, 2]
    assert update_collection(listing, home, PARAMS).cached  # nothing moved: nothing done

    session = Session.open(home)
    assert session.n == 6 and session.query(image_id=6, k=3).results[0].id != 6
