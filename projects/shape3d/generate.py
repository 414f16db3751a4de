"""The default data set: Turkish-art-inspired motif shapes with Turkish descriptions, generated deterministically.

Every shape is a watertight trimesh built from primitives (sphere, box, revolved profiles, extruded polygons);
variations change proportions and orientation (not absolute size: meshes are normalised to the unit cube when
read, which would erase it). An optional style text changes the proportions the same way for every family:
``dolgun`` (plump: wider, 1.3x across) and ``narin`` (slender: 0.75x across), so style injection has something to
learn. ``generate_default_data`` writes meshes + ``train.jsonl`` / ``val.jsonl`` once and reuses them after.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from trimesh import creation

GENERATOR_VERSION = 3
STYLES = {"": 1.0, "dolgun üslup": 1.3, "narin üslup": 0.75}


def _rotation(axis: str, degrees: float) -> np.ndarray:
    vector = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}[axis]
    return trimesh.transformations.rotation_matrix(math.radians(degrees), vector)


def _revolve(profile: list[tuple[float, float]], sections: int = 48) -> trimesh.Trimesh:
    """Surface of revolution about z of a (radius, height) profile that starts and ends on the axis."""
    return creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)


def _extrude_fan(outline: np.ndarray, height: float) -> trimesh.Trimesh:
    """Prism over a star-shaped 2D outline (fan triangulation from the origin), centred on z = 0."""
    vertices = np.vstack([[0.0, 0.0], outline])
    n = len(outline)
    faces = np.array([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    mesh = creation.extrude_triangulation(vertices, faces, height)
    mesh.apply_translation([0, 0, -height / 2])
    return mesh


def star_prism(points: int, inner_ratio: float = 0.45, height: float = 0.25) -> trimesh.Trimesh:
    angles = np.arange(2 * points) * math.pi / points + math.pi / 2
    radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
    return _extrude_fan(np.c_[radius * np.cos(angles), radius * np.sin(angles)], height)


def crescent(
    height: float = 0.3, offset: float = 0.4, inner_radius: float = 0.8, steps: int = 32
) -> trimesh.Trimesh:
    """Hilal: the unit disc minus a shifted disc, extruded. Triangulated as a strip between the two arcs."""
    x = (1 - inner_radius**2 + offset**2) / (2 * offset)  # where the two circles meet
    y = math.sqrt(1 - x * x)
    outer_start = math.atan2(y, x)
    inner_start = math.atan2(y, x - offset)
    t = np.linspace(0, 1, steps + 1)
    outer = np.c_[
        np.cos(outer_start + t * (2 * math.pi - 2 * outer_start)),
        np.sin(outer_start + t * (2 * math.pi - 2 * outer_start)),
    ]
    angle = inner_start + t * (2 * math.pi - 2 * inner_start)
    inner = np.c_[offset + inner_radius * np.cos(angle), inner_radius * np.sin(angle)][1:-1]
    vertices = np.vstack([outer, inner])

    def inner_index(k: int) -> int:  # the arcs share their end points (the tips of the crescent)
        return 0 if k == 0 else steps if k == steps else steps + k

    faces = []
    for k in range(steps):
        if k + 1 < steps:
            faces.append([k, k + 1, inner_index(k + 1)])
        if k > 0:
            faces.append([k, inner_index(k + 1), inner_index(k)])
    mesh = creation.extrude_triangulation(vertices, np.asarray(faces), height)
    mesh.apply_translation([0, 0, -height / 2])
    return mesh


@dataclass(frozen=True)
class Variant:
    """One described shape: how to build it (given a proportion jitter) and ways to say it in Turkish."""

    key: str
    build: Callable[[np.random.Generator], trimesh.Trimesh]
    phrases: tuple[str, ...]


def _j(rng: np.random.Generator, value: float, spread: float = 0.08) -> float:
    return value * (1 + rng.uniform(-spread, spread))


def _scaled(mesh: trimesh.Trimesh, sx: float, sy: float, sz: float) -> trimesh.Trimesh:
    mesh.apply_scale((sx, sy, sz))
    return mesh


def _rotated(mesh: trimesh.Trimesh, axis: str, degrees: float) -> trimesh.Trimesh:
    mesh.apply_transform(_rotation(axis, degrees))
    return mesh


def variants() -> list[Variant]:
    """Every shape family with its proportion / orientation variations."""
    sphere = lambda: creation.icosphere(subdivisions=3)  # noqa: E731
    return [
        Variant("kure", lambda r: sphere(), ("bir küre", "yuvarlak bir top")),
        Variant(
            "basik_kure",
            lambda r: _scaled(sphere(), 1, 1, _j(r, 0.5)),
            ("basık bir küre", "yassı bir elipsoid"),
        ),
        Variant(
            "yumurta",
            lambda r: _scaled(sphere(), 1, 1, _j(r, 1.7)),
            ("dik duran bir yumurta", "uzun bir elipsoid"),
        ),
        Variant("kup", lambda r: creation.box((1, 1, _j(r, 1.0, 0.04))), ("bir küp", "köşeli bir kutu")),
        Variant(
            "dik_prizma",
            lambda r: creation.box((_j(r, 0.35), _j(r, 0.35), 1)),
            ("ince uzun dik bir prizma", "dikdörtgen bir sütun"),
        ),
        Variant(
            "levha",
            lambda r: creation.box((1, 1, _j(r, 0.2))),
            ("yassı kare bir levha", "ince bir kare plaka"),
        ),
        Variant(
            "silindir",
            lambda r: creation.cylinder(0.5, _j(r, 1.0), sections=48),
            ("bir silindir", "dik bir silindir"),
        ),
        Variant(
            "ince_silindir",
            lambda r: creation.cylinder(_j(r, 0.18), 1.0, sections=48),
            ("ince uzun bir silindir", "ince bir çubuk"),
        ),
        Variant(
            "disk",
            lambda r: creation.cylinder(0.5, _j(r, 0.2), sections=48),
            ("basık bir silindir", "yuvarlak bir disk"),
        ),
        Variant(
            "yatay_silindir",
            lambda r: _rotated(creation.cylinder(_j(r, 0.25), 1.0, sections=48), "y", 90),
            ("yatay duran bir silindir", "yere yatırılmış bir silindir"),
        ),
        Variant(
            "koni", lambda r: creation.cone(0.5, _j(r, 1.0), sections=48), ("bir koni", "sivri uçlu bir koni")
        ),
        Variant(
            "ters_koni",
            lambda r: _rotated(creation.cone(0.5, _j(r, 1.0), sections=48), "x", 180),
            ("ters duran bir koni", "baş aşağı bir koni"),
        ),
        Variant(
            "piramit",
            lambda r: creation.cone(0.7, _j(r, 0.9), sections=4),
            ("kare tabanlı bir piramit", "dört yüzlü bir piramit"),
        ),
        Variant(
            "ince_simit",
            lambda r: creation.torus(1.0, _j(r, 0.2), major_sections=48, minor_sections=16),
            ("ince bir simit", "ince bir halka"),
        ),
        Variant(
            "kalin_simit",
            lambda r: creation.torus(1.0, _j(r, 0.45), major_sections=48, minor_sections=16),
            ("kalın bir simit", "tombul bir halka"),
        ),
        Variant(
            "dik_simit",
            lambda r: _rotated(
                creation.torus(1.0, _j(r, 0.3), major_sections=48, minor_sections=16), "x", 90
            ),
            ("dik duran bir simit", "ayakta duran bir halka"),
        ),
        Variant(
            "bes_yildiz",
            lambda r: star_prism(5, _j(r, 0.45)),
            ("beş köşeli yıldız motifi", "beş kollu bir yıldız"),
        ),
        Variant(
            "alti_yildiz",
            lambda r: star_prism(6, _j(r, 0.55)),
            ("altı köşeli yıldız motifi", "altı kollu bir yıldız"),
        ),
        Variant(
            "sekiz_yildiz",
            lambda r: star_prism(8, _j(r, 0.6)),
            ("sekiz köşeli yıldız motifi", "sekiz kollu bir yıldız"),
        ),
        Variant("hilal", lambda r: crescent(_j(r, 0.3)), ("bir hilal motifi", "yatay bir ay hilali")),
        Variant(
            "dik_hilal",
            lambda r: _rotated(crescent(_j(r, 0.3)), "x", 90),
            ("dik duran bir hilal", "ayakta duran bir hilal motifi"),
        ),
        Variant(
            "kubbe",
            lambda r: _revolve(
                [(0, 0)]
                + [(math.cos(t), _j(r, 0.9, 0.04) * math.sin(t)) for t in np.linspace(0, math.pi / 2, 16)]
            ),
            ("yarım küre biçiminde bir kubbe", "yuvarlak bir kubbe"),
        ),
        Variant(
            "sivri_kubbe",
            lambda r: _revolve(
                [(0, 0)]
                + [(math.cos(t), _j(r, 1.6) * math.sin(t) ** 1.8) for t in np.linspace(0, math.pi / 2, 16)]
            ),
            ("sivri bir kubbe", "yüksek sivri bir kubbe"),
        ),
        Variant(
            "vazo",
            lambda r: _revolve(
                [(0, 0), (0.5, 0), (0.9, 0.4), (0.7, 0.9), (0.35, 1.2), (_j(r, 0.5), 1.6), (0, 1.6)]
            ),
            ("şişkin gövdeli bir vazo", "uzun boyunlu bir testi"),
        ),
        Variant(
            "minare",
            lambda r: _revolve(
                [(0, 0), (0.2, 0), (0.2, 1.6), (0.28, 1.65), (0.2, 1.7), (0.2, 2.0), (0, _j(r, 2.5, 0.04))]
            ),
            ("ince uzun bir minare", "sivri külahlı bir minare"),
        ),
        Variant(
            "altigen_prizma",
            lambda r: creation.cylinder(0.5, _j(r, 0.8), sections=6),
            ("altıgen bir prizma", "altı köşeli bir sütun"),
        ),
    ]


def apply_style(mesh: trimesh.Trimesh, style: str) -> trimesh.Trimesh:
    """Style changes the width across (x, y) relative to the height: dolgun wider, narin slimmer."""
    factor = STYLES[style]
    return _scaled(mesh, factor, factor, 1.0)


def generate_default_data(
    root: str | Path, copies_train: int = 4, copies_val: int = 1, seed: int = 0
) -> Path:
    """Write the motif meshes and ``train.jsonl`` / ``val.jsonl`` under ``root`` (once; reused while the
    manifest's version and counts match). Returns ``root``."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    wanted = {
        "version": GENERATOR_VERSION,
        "copies_train": copies_train,
        "copies_val": copies_val,
        "seed": seed,
    }
    if manifest_path.exists():
        try:
            if json.loads(manifest_path.read_text()) == wanted:
                return root
        except json.JSONDecodeError:
            pass
    (root / "meshes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    styles = list(STYLES)
    for variant in variants():
        for split, copies in (("train", copies_train), ("val", copies_val)):
            for copy in range(copies):
                for style_index, style in enumerate(styles):
                    mesh = apply_style(variant.build(rng), style)
                    if not mesh.is_watertight:
                        raise RuntimeError(f"generator bug: {variant.key} is not watertight")
                    # a few formats, so every reader is exercised by the default run
                    suffix = (".ply", ".obj", ".off")[(copy + style_index) % 3]
                    relative = f"meshes/{split}_{variant.key}_{copy}_{style_index}{suffix}"
                    mesh.export(root / relative)
                    phrase = variant.phrases[(copy + style_index + (split == "val")) % len(variant.phrases)]
                    splits[split].append({"mesh": relative, "text": phrase, "style": style})
    for split, rows in splits.items():
        with (root / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest_path.write_text(json.dumps(wanted))
    return root


def all_texts() -> list[str]:
    """Every phrase and style text of the default set (the tiny tokenizer's training corpus)."""
    return [p for v in variants() for p in v.phrases] + [s for s in STYLES if s]
