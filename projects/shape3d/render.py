"""A quick preview picture of voxel shapes: depth-shaded orthographic views, no GPU or display needed."""

from __future__ import annotations

import numpy as np

PRED_COLOUR = np.array([0.20, 0.45, 0.85])
TARGET_COLOUR = np.array([0.90, 0.50, 0.15])


def depth_view(occupancy: np.ndarray, axis: int, size: int = 96) -> np.ndarray:
    """Shade of the first occupied voxel seen along ``axis`` (near = bright), z up; 1.0 where nothing is hit.

    Views: axis 1 = front (looking along +y), axis 0 = side (along +x), axis 2 = top (looking down -z)."""
    grid = occupancy.astype(bool)
    resolution = grid.shape[0]
    if axis == 2:
        grid = grid[:, :, ::-1]  # look from above
    hit = grid.any(axis=axis)
    first = np.argmax(grid, axis=axis)
    shade = np.where(hit, 1.0 - 0.75 * first / max(resolution - 1, 1), np.nan)
    image = shade.T[::-1]  # rows: z (y for the top view) from top to bottom
    scale = max(size // resolution, 1)
    return np.kron(image, np.ones((scale, scale)))


def colourise(view: np.ndarray, colour: np.ndarray) -> np.ndarray:
    out = np.ones((*view.shape, 3))
    mask = ~np.isnan(view)
    out[mask] = view[mask, None] * colour[None, :] + (1 - view[mask, None]) * 0.05
    return out


def preview_grid(preds: list[np.ndarray], targets: list[np.ndarray], size: int = 96) -> np.ndarray:
    """One row per sample: front / side / top of the prediction (blue), then of the target (orange)."""
    rows = []
    for pred, target in zip(preds, targets, strict=True):
        tiles = [colourise(depth_view(pred, a, size), PRED_COLOUR) for a in (1, 0, 2)]
        tiles += [colourise(depth_view(target, a, size), TARGET_COLOUR) for a in (1, 0, 2)]
        height = max(t.shape[0] for t in tiles)
        tiles = [
            np.pad(t, ((0, height - t.shape[0]), (0, height - t.shape[1]), (0, 0)), constant_values=1.0)
            for t in tiles
        ]
        separated = []
        for index, tile in enumerate(tiles):
            separated.append(tile)
            separated.append(np.full((height, 6 if index == 2 else 2, 3), 0.6))
        rows.append(np.concatenate(separated[:-1], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 0.6))
    return (np.concatenate(rows[:-1], axis=0) * 255).round().astype(np.uint8)
