"""Result grids as PNG: the query first, then its matches, each titled with label and scores.

Pure and headless (a matplotlib ``Figure`` on the Agg canvas, never pyplot), so it is
safe in scripts, tests and servers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stl10_similarity.params import PICTURE_FORMATS
from stl10_similarity.search import QueryResult

PANEL_W, PANEL_H, DPI = 2.4, 3.0, 100  # inches per panel: 96 px images drawn at 2.5x
MAX_COLUMNS = 6
CAPTION_CHARS = 26  # a path longer than this is shown by its end (the file name and its folders nearest it)
AGREE, DISAGREE, QUERY, UNKNOWN = "#1a9850", "#d73027", "#2b2b2b", "#7f7f7f"


def grid_size(k: int) -> tuple[int, int]:
    """Pixel (width, height) of the grid for ``k`` matches."""
    cols = min(k + 1, MAX_COLUMNS)
    rows = math.ceil((k + 1) / cols)
    return round(cols * PANEL_W * DPI), round(rows * PANEL_H * DPI)


def picture_format(path: Path) -> str:
    """The format a picture written to ``path`` gets, from its suffix; a ParameterError for any other."""
    from stl10_similarity.errors import ParameterError

    fmt = PICTURE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ParameterError("png", f"{path} must end in {', '.join(PICTURE_FORMATS)}: that is the format written")
    return fmt


def write_picture(path: Path, png: bytes) -> None:
    """Write a rendered picture (PNG bytes) to ``path`` in the format its suffix names, atomically."""
    from stl10_similarity.store.artifacts import write_bytes

    fmt = picture_format(path)
    if fmt != "PNG":
        from PIL import Image

        buffer = io.BytesIO()
        with Image.open(io.BytesIO(png)) as img:
            img.convert("RGB").save(buffer, format=fmt, quality=92)
        png = buffer.getvalue()
    write_bytes(path, png)


def caption_path(path: str) -> str:
    """A collection-relative path short enough for a caption: ``cat/0122.jpg``, or ``…/cat/0122.jpg``."""
    return path if len(path) <= CAPTION_CHARS else "…" + path[-(CAPTION_CHARS - 1):]


def _hwc(image: np.ndarray) -> np.ndarray:
    return np.transpose(image, (1, 2, 0)) if image.ndim == 3 and image.shape[0] == 3 else image


def render_grid(result: QueryResult, query_image: np.ndarray, match_images: Sequence[np.ndarray]) -> bytes:
    """Draw the grid as PNG bytes.

    Args:
        result: the query and its matches.
        query_image: uint8 ``(3, H, W)`` or ``(H, W, 3)``.
        match_images: uint8 images of the matches, in rank order (any size each).

    Returns:
        The encoded PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(result.results)
    cols = min(k + 1, MAX_COLUMNS)
    rows = math.ceil((k + 1) / cols)
    fig = Figure(figsize=(cols * PANEL_W, rows * PANEL_H), dpi=DPI)
    FigureCanvasAgg(fig)
    q = result.query
    qtitle = f"query {caption_path(q.path) if q.path else q.id}" if q.id is not None \
        else f"query {caption_path(Path(q.image or '').name)}"
    panels = [(query_image, f"{qtitle}\n{q.label or ''}", QUERY)]
    for match, image in zip(result.results, match_images):
        if q.class_index is None or q.class_index < 0:  # an image file or unlabelled: no class to agree with
            color = UNKNOWN
        else:
            color = AGREE if match.class_index == q.class_index else DISAGREE
        who = caption_path(match.path) if match.path else f"id {match.id}"
        title = f"#{match.rank} {who}\n{match.label}\nJ {match.jaccard:.2f}  cos {match.cosine:.2f}"
        panels.append((image, title, color))
    for slot in range(rows * cols):
        ax = fig.add_subplot(rows, cols, slot + 1)
        if slot >= len(panels):
            ax.axis("off")
            continue
        image, title, color = panels[slot]
        ax.imshow(_hwc(image), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(5)
        ax.set_xlabel(title, fontsize=9, color=QUERY if color == QUERY else color)
    height = rows * PANEL_H  # margins in inches, so that three caption lines fit under every row
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.08 / height, bottom=0.62 / height, wspace=0.08,
                        hspace=0.62 / (PANEL_H - 0.62))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


MAX_GROUP_ROWS = 20  # a duplicates picture shows the first groups, one row each ...
MAX_GROUP_IMAGES = 8  # ... and up to this many images of each


def render_groups(groups: Sequence, images: Sequence[Sequence[np.ndarray]]) -> bytes:
    """Draw groups of near-duplicates as PNG bytes: one row per group, its images side by side.

    Args:
        groups: ``duplicates.DuplicateGroup`` objects (ids, paths, min_cosine), at most MAX_GROUP_ROWS drawn.
        images: each drawn group's images, uint8, in its id order (at most MAX_GROUP_IMAGES each).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, min(len(groups), MAX_GROUP_ROWS))
    cols = max([min(len(g.ids), MAX_GROUP_IMAGES) for g in groups[:rows]] or [1])
    side = 1.6
    fig = Figure(figsize=(cols * side, rows * (side + 0.45)), dpi=DPI)
    FigureCanvasAgg(fig)
    if not groups:
        fig.text(0.5, 0.5, "no duplicates", ha="center", va="center")
    for row, (group, pictures) in enumerate(zip(groups[:rows], images)):
        paths = group.paths or [None] * len(group.ids)
        for col in range(cols):
            ax = fig.add_subplot(rows, cols, row * cols + col + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(pictures):
                ax.axis("off")
                continue
            ax.imshow(_hwc(pictures[col]), interpolation="nearest")
            name = caption_path(paths[col]) if paths[col] else f"id {group.ids[col]}"
            if group.ids[col] == getattr(group, "keep", None):
                name = f"KEEP {name}"
                for spine in ax.spines.values():
                    spine.set_edgecolor("#1a7f37")
                    spine.set_linewidth(3)
            more = f" (+{len(group.ids) - MAX_GROUP_IMAGES})" if col == cols - 1 and len(group.ids) > cols else ""
            ax.set_xlabel(name + more, fontsize=7)
            if col == 0:
                kind = getattr(group, "kind", "")
                ax.set_ylabel(f"group {row + 1} {kind}\nmin cos {group.min_cosine:.3f}", fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.99, bottom=0.03, wspace=0.08, hspace=0.35)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
