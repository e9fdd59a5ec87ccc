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

from .search import QueryResult

PANEL_W, PANEL_H, DPI = 2.4, 3.0, 100  # inches per panel: 96 px images drawn at 2.5x
MAX_COLUMNS = 6
AGREE, DISAGREE, QUERY, UNKNOWN = "#1a9850", "#d73027", "#2b2b2b", "#7f7f7f"


def grid_size(k: int) -> tuple[int, int]:
    """Pixel (width, height) of the grid for ``k`` matches."""
    cols = min(k + 1, MAX_COLUMNS)
    rows = math.ceil((k + 1) / cols)
    return round(cols * PANEL_W * DPI), round(rows * PANEL_H * DPI)


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
    qtitle = f"query {Path(q.path).name if q.path else q.id}" if q.id is not None else f"query {Path(q.image or '').name}"
    panels = [(query_image, f"{qtitle}\n{q.label or ''}", QUERY)]
    for match, image in zip(result.results, match_images):
        if q.class_index is None or q.class_index < 0:  # an image file or unlabelled: no class to agree with
            color = UNKNOWN
        else:
            color = AGREE if match.class_index == q.class_index else DISAGREE
        who = Path(match.path).name if match.path else f"id {match.id}"
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
