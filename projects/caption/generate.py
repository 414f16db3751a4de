"""The shipped default data: pictures of two coloured shapes with several Turkish captions each.

Generated deterministically once, by ``CaptionDataModule.prepare_data`` (or ``python -m projects.caption.prepare``),
into ``data/generated/caption/`` (COCO caption JSON per split plus the PNGs), and reused while ``manifest.json``
says the same version and sizes. Every caption names both objects'
colour and shape and their relation, in one of four phrasings, e.g. for a red square left of a blue circle:

* ``mavi bir dairenin solunda kırmızı bir kare``   (to the left of a blue circle, a red square)
* ``kırmızı bir karenin sağında mavi bir daire``   (to the right of a red square, a blue circle)
* ``solda kırmızı bir kare, sağda mavi bir daire`` (on the left a red square, on the right a blue circle)
* ``kırmızı bir kare ve mavi bir daire yan yana``  (a red square and a blue circle side by side)

``attributes.json`` keeps each image's scene (layout, colour and shape of each object); only the optional
tiny-CLIP pre-training (:mod:`projects.caption.clip_pretrain`) reads it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from common.io import atomic_path

VERSION = 1
DEFAULT_ROOT = Path("data/generated/caption")
IMAGE_SIZE = 64

# name, genitive ("of the X"), drawn by _draw_shape
SHAPES = [("kare", "karenin"), ("daire", "dairenin"), ("üçgen", "üçgenin"), ("yıldız", "yıldızın")]
COLOURS = [
    ("kırmızı", (220, 30, 30)),
    ("mavi", (30, 60, 220)),
    ("yeşil", (30, 170, 50)),
    ("sarı", (235, 200, 20)),
    ("mor", (140, 40, 170)),
]
LAYOUTS = ("yatay", "dikey")  # horizontal (left / right) or vertical (top / bottom)


def _phrase(colour: int, shape: int) -> str:
    return f"{COLOURS[colour][0]} bir {SHAPES[shape][0]}"


def _genitive(colour: int, shape: int) -> str:
    return f"{COLOURS[colour][0]} bir {SHAPES[shape][1]}"


def captions_for(scene: dict) -> list[str]:
    """The four reference captions of a scene (``first`` is the left / top object)."""
    a, b = scene["first"], scene["second"]
    if scene["layout"] == "yatay":
        return [
            f"{_genitive(*b)} solunda {_phrase(*a)}",
            f"{_genitive(*a)} sağında {_phrase(*b)}",
            f"solda {_phrase(*a)}, sağda {_phrase(*b)}",
            f"{_phrase(*a)} ve {_phrase(*b)} yan yana",
        ]
    return [
        f"{_genitive(*b)} üstünde {_phrase(*a)}",
        f"{_genitive(*a)} altında {_phrase(*b)}",
        f"üstte {_phrase(*a)}, altta {_phrase(*b)}",
        f"{_phrase(*a)} ve altında {_phrase(*b)}",
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: int, cx: float, cy: float, r: float, fill: tuple) -> None:
    name = SHAPES[shape][0]
    if name == "kare":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "daire":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "üçgen":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # five-pointed star
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)


def render(scene: dict, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene with jittered positions, sizes, colours and background."""
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    for slot, (colour, shape) in enumerate((scene["first"], scene["second"])):
        r = rng.uniform(0.11, 0.16) * size
        along = rng.uniform(0.2, 0.32) * size if slot == 0 else rng.uniform(0.68, 0.8) * size
        across = rng.uniform(0.3, 0.7) * size
        cx, cy = (along, across) if scene["layout"] == "yatay" else (across, along)
        fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour][1])
        _draw_shape(draw, shape, cx, cy, r, fill)
    return image


def random_scene(rng: random.Random) -> dict:
    while True:
        first = [rng.randrange(len(COLOURS)), rng.randrange(len(SHAPES))]
        second = [rng.randrange(len(COLOURS)), rng.randrange(len(SHAPES))]
        if first != second:
            return {"layout": rng.choice(LAYOUTS), "first": first, "second": second}


def manifest_for(sizes: dict[str, int] | None = None, seed: int = 0) -> dict:
    """What a generated set is keyed by (cheap: nothing is generated)."""
    sizes = dict(sizes or {"train": 2000, "val": 200, "test": 200})
    return {"version": VERSION, "sizes": sizes, "seed": seed, "image_size": IMAGE_SIZE}


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, "utf-8")


def generate(root: str | Path = DEFAULT_ROOT, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ``<root>/images/*.png``, ``<root>/{train,val,test}.json`` (COCO captions) and
    ``<root>/attributes.json``; return ``root``. Does nothing when the manifest already matches. Every file is
    written atomically and the manifest last, so an interrupted run is regenerated, never half-read."""
    root = Path(root)
    manifest = manifest_for(sizes, seed)
    if read_manifest(root) == manifest:
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    attributes: dict[str, dict] = {}
    image_id = 0
    for split, count in manifest["sizes"].items():
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            scene = random_scene(rng)
            file_name = f"{image_id:06d}.png"
            with atomic_path(root / "images" / file_name) as temporary:
                render(scene, rng).save(temporary, format="PNG")
            images.append({"id": image_id, "file_name": f"images/{file_name}"})
            for caption in captions_for(scene):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
            attributes[str(image_id)] = scene
        coco = {"images": images, "annotations": annotations}
        _write_text(root / f"{split}.json", json.dumps(coco, ensure_ascii=False, indent=0))
    _write_text(root / "attributes.json", json.dumps(attributes))
    _write_text(
        root / "manifest.json", json.dumps(manifest)
    )  # written last: a half-written set is regenerated
    return root


def attribute_targets(scene: dict) -> list[int]:
    """Class indices of (layout, first colour, first shape, second colour, second shape)."""
    return [LAYOUTS.index(scene["layout"]), *scene["first"], *scene["second"]]


ATTRIBUTE_CLASSES = [len(LAYOUTS), len(COLOURS), len(SHAPES), len(COLOURS), len(SHAPES)]
