"""Real handwritten digits in EMNIST's file layout, from the 1797 digits scikit-learn ships (no download).

    python -m projects.diffusion.real_digits data/real_digits [--train-per-class N --test-per-class N]

scikit-learn's ``load_digits`` (the UCI "optdigits" set: 8 x 8 images, 17 grey levels, written by 43 people)
is the only real handwriting a registry package ships here. Each image is scaled to 0-255, resized to a
20 x 20 box and centred by mass in 28 x 28, as MNIST and EMNIST were prepared, then written as
``emnist-digits-{train,test}-{images,labels}-idx{3,1}-ubyte.gz`` (transposed, as EMNIST stores them). No
mapping file is written: the ``digits`` split has a fixed one. Per class, the last ``test_fraction`` of the
images in file order form the test subset (the set is ordered roughly by writer, so fewer writers are shared
between the subsets than with a random split). Needs ``pip install scikit-learn`` (extra ``real-digits``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from projects.diffusion.idx import emnist_paths, write_idx


def to_emnist_image(digit: np.ndarray) -> np.ndarray:
    """An 8 x 8 image with values 0-16 -> uint8 28 x 28: 20 x 20 box (bicubic), centred by mass."""
    pixels = Image.fromarray((digit * (255.0 / 16.0)).round().astype(np.uint8))
    box = np.asarray(pixels.resize((20, 20), Image.Resampling.BICUBIC), dtype=np.float32)
    out = np.zeros((28, 28), dtype=np.float32)
    cy, cx = ndimage.center_of_mass(box) if box.sum() > 0 else (9.5, 9.5)
    top = min(max(int(round(14 - cy)), 0), 8)
    left = min(max(int(round(14 - cx)), 0), 8)
    out[top : top + 20, left : left + 20] = box
    return out.clip(0, 255).round().astype(np.uint8)


def split_by_class(
    labels: np.ndarray, test_fraction: float, train_per_class: int | None, test_per_class: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): per class, the last ``test_fraction`` in file order are test; optional caps."""
    train, test = [], []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        cut = len(where) - int(round(test_fraction * len(where)))
        train.append(where[:cut][:train_per_class])
        test.append(where[cut:][:test_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def write_real_digits(
    out_dir: str | Path,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> Path:
    """Convert scikit-learn's digits and write them in EMNIST-digits form into ``out_dir``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise SystemExit("real_digits needs scikit-learn: pip install -e '.[real-digits]'") from error
    digits = load_digits()
    images = np.stack([to_emnist_image(d) for d in digits.images])
    labels = digits.target.astype(np.uint8)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = split_by_class(labels, test_fraction, train_per_class, test_per_class)
    for subset, index in (("train", train), ("test", test)):
        images_path, labels_path = emnist_paths(out_dir, "digits", subset)
        write_idx(images_path, images[index].transpose(0, 2, 1))  # EMNIST's transposed layout
        write_idx(labels_path, labels[index])
        print(f"{subset}: {len(index)} images -> {images_path}")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--train-per-class", type=int, default=None)
    parser.add_argument("--test-per-class", type=int, default=None)
    args = parser.parse_args()
    write_real_digits(args.out_dir, args.test_fraction, args.train_per_class, args.test_per_class)


if __name__ == "__main__":
    main()
