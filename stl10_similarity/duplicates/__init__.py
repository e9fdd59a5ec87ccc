"""Duplicates: exact copies, near-duplicates and similar photos, the image each group keeps, and moves a user
can undo.

``pairs`` finds candidate pairs in a forest (never all pairs), ``pixels`` confirms near-duplicates by their
pictures, ``groups`` forms the groups of each kind and picks their kept image, ``moves`` moves the others out and
back. ``ray_pairs`` looks for candidates tree by tree on Ray.
"""

from stl10_similarity.duplicates.groups import DuplicateGroup, find_duplicates
from stl10_similarity.duplicates.moves import Move, UndoReport, move_files, planned_moves, undo_moves

__all__ = ["DuplicateGroup", "Move", "UndoReport", "find_duplicates", "move_files", "planned_moves", "undo_moves"]
