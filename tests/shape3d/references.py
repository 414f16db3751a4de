"""Independent references shared by the shape3d geometry tests."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def kdtree_chamfer(x: np.ndarray, y: np.ndarray) -> float:
    """Reference Chamfer of two clouds: squared nearest-neighbour distance, mean per direction, both directions
    summed (scipy's cKDTree, float64 when given float64)."""
    d_xy, _ = cKDTree(y).query(x)
    d_yx, _ = cKDTree(x).query(y)
    return float((d_xy**2).mean() + (d_yx**2).mean())
