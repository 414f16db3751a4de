"""Image-generation metrics with a pluggable feature extractor: FID, Inception Score, SSIM, conditional accuracy.

torchmetrics does the maths and the DDP reduction (feature sums / covariances are ``sum``-reduced, IS logits are
``cat``-gathered). What this file adds:

* an :class:`Extractor` interface (``extract(images) -> (features, logits)``) so FID / IS can run on the standard
  Inception network when its weights are on disk, or on a small classifier trained on the same data when they
  are not (the default here: nothing can be downloaded);
* metric names that say which extractor produced them (``fid_charclf`` vs ``fid_inception``), so numbers from
  different feature spaces are never compared or mixed;
* the extractor is held *unregistered* by the metrics, so a frozen classifier never leaks into the generator's
  checkpoint ``state_dict``;
* a second feature space that no network learned (:class:`PixelFeatures`: FID on 8 x 8 area-averaged pixels)
  and the image statistics a person sees at a glance (:class:`ImageStatistics`: background level, share of
  saturated pixels). A classifier's features are built to ignore what does not change the class, so a grey,
  noisy background can leave its FID at the level of clean samples (issue 24: real digits with the background
  lifted to -0.7 plus N(0, 0.12) noise scored the judge's FID of a trained model, with a judge that normalised
  each image's intensity away); these two see it without any learned features.

Images given to every metric here are ``N x C x H x W`` floats in [-1, 1] (the diffusion model's range).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import StructuralSimilarityIndexMeasure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.utilities import dim_zero_cat

from common.errors import InputError, MissingInputError


class Extractor(nn.Module):
    """What FID / IS / accuracy need from a network. ``name`` goes into metric names."""

    name: str = "extractor"
    num_features: int
    num_classes: int

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """``images`` in [-1, 1] -> ``(features N x num_features, logits N x num_classes)``."""
        raise NotImplementedError


class InceptionExtractor(Extractor):
    """The standard FID Inception-v3 (``pt_inception-2015-12-05``) from a local weights file.

    Needs the ``torch-fidelity`` package and the weights file; both are checked up front with one clear error,
    since nothing is downloaded here. Grey images are repeated to 3 channels; torch-fidelity resizes to 299.
    """

    name = "inception"
    num_features = 2048
    num_classes = 1008

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        if not weights_path or not Path(weights_path).is_file():
            raise MissingInputError(
                f"model.init_args.inception_weights: Inception weights '{weights_path}' not found; use the "
                "character classifier extractor (charclf) or put pt_inception-2015-12-05-6726825d.pth there"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048", "logits_unbiased"],
                feature_extractor_weights_path=weights_path,
            )
        except (ImportError, ModuleNotFoundError):
            raise InputError(
                "model.init_args.extractor: inception needs torch-fidelity (`pip install torch-fidelity`)"
            ) from None

    @torch.no_grad()
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        features, logits = self.net(pixels)
        return features, logits


class PixelFeatures(Extractor):
    """Pixels as features: the image area-averaged to ``side x side`` (64-d by default), no logits.

    No training, so no blind spots learned from the data: a background shift moves the feature means, pixel
    noise their covariance. FID in this space (``fid_pixels``) is the independent second opinion next to the
    judge's."""

    name = "pixels"
    num_classes = 0

    def __init__(self, side: int = 8) -> None:
        super().__init__()
        self.side = side
        self.num_features = side * side

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pooled = nn.functional.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), self.side)
        return pooled.flatten(1), pooled.new_zeros(len(images), 0)


class ImageStatistics(Metric):
    """Background level (mean over images of each image's median pixel: the background covers most of a
    character image) and saturation share (pixels within ``margin`` of -1 or +1), images in [-1, 1].

    Sum-reduced, so DDP ranks add up. Real EMNIST-style images: background -1.00, most pixels saturated (the
    background is exactly -1); grey or noisy samples show a higher background and a lower share."""

    full_state_update = False

    def __init__(self, margin: float = 0.02, **kwargs) -> None:
        super().__init__(**kwargs)
        self.margin = margin
        self.add_state("background_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("saturated", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pixels", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor) -> None:
        flat = images.detach().flatten(1).float()
        self.background_sum += flat.median(dim=1).values.double().sum()
        self.saturated += int((flat.abs() >= 1 - self.margin).sum())
        self.pixels += flat.numel()
        self.images += len(flat)

    def compute(self) -> dict[str, Tensor]:
        return {
            "background": (self.background_sum / self.images.clamp(min=1)).float(),
            "saturation": (self.saturated.double() / self.pixels.clamp(min=1)).float(),
        }


class _Hidden(nn.Module):
    """Feeds one output of an extractor to a torchmetrics metric, holding the extractor outside the module tree
    (not in ``state_dict``, not moved by ``.to``: it is moved to the images' device on each call)."""

    def __init__(self, extractor: Extractor, output: str) -> None:
        super().__init__()
        object.__setattr__(self, "_extractor", extractor)
        self.output = output
        self.num_features = extractor.num_features if output == "features" else extractor.num_classes

    def forward(self, images: Tensor) -> Tensor:
        extractor = self._extractor.to(images.device).eval()
        with torch.no_grad():
            features, logits = extractor.extract(images)
        return (features if self.output == "features" else logits).float()


class ExtractorFID(FrechetInceptionDistance):
    """FID in the feature space of ``extractor``; ``update(images, real=...)`` with images in [-1, 1]."""

    def __init__(self, extractor: Extractor, **kwargs) -> None:
        super().__init__(feature=_Hidden(extractor, "features"), normalize=False, **kwargs)
        self.extractor_name = extractor.name


class ExtractorIS(InceptionScore):
    """Inception Score from the class logits of ``extractor`` (an upper bound of ``num_classes``).

    One split by default (all samples in one estimate); its spread is then undefined and returned as 0 instead
    of torch's "degrees of freedom <= 0" warning, which the parent class printed at every validation."""

    def __init__(self, extractor: Extractor, splits: int = 1, **kwargs) -> None:
        with warnings.catch_warnings():  # "will save all extracted features": num_classes logits per sample
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            super().__init__(feature=_Hidden(extractor, "logits"), splits=splits, normalize=False, **kwargs)
        self.extractor_name = extractor.name

    def compute(self) -> tuple[Tensor, Tensor]:
        if self.splits > 1:
            return super().compute()
        logits = dim_zero_cat(self.features)
        prob, log_prob = logits.softmax(dim=1), logits.log_softmax(dim=1)
        score = (prob * (log_prob - prob.mean(dim=0, keepdim=True).log())).sum(dim=1).mean().exp()
        return score, torch.zeros_like(score)


class ConditionalAccuracy(MulticlassAccuracy):
    """Share of class-conditional samples that ``extractor`` classifies as the class they were asked for."""

    def __init__(self, extractor: Extractor, **kwargs) -> None:
        super().__init__(num_classes=extractor.num_classes, average="micro", **kwargs)
        object.__setattr__(self, "_extractor", extractor)
        self.extractor_name = extractor.name

    def update(self, images: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        extractor = self._extractor.to(images.device).eval()
        with torch.no_grad():
            _, logits = extractor.extract(images)
        super().update(logits, labels)


class ReconstructionSSIM(StructuralSimilarityIndexMeasure):
    """SSIM between real images and their one-step reconstructions; inputs in [-1, 1], data range 1 after
    mapping to [0, 1]. The pairing (which reconstruction, which noise level) is the caller's protocol."""

    def __init__(self, **kwargs) -> None:
        super().__init__(data_range=1.0, **kwargs)

    def update(self, reconstructed: Tensor, real: Tensor) -> None:  # type: ignore[override]
        super().update((reconstructed.clamp(-1, 1) + 1) / 2, (real.clamp(-1, 1) + 1) / 2)


def metric_names(extractor: Extractor, prefix: str = "val") -> dict[str, str]:
    """Log keys that carry the extractor's name: ``val/fid_charclf``, ``val/is_charclf``, ``val/cond_acc_charclf``."""
    return {kind: f"{prefix}/{kind}_{extractor.name}" for kind in ("fid", "is", "cond_acc")}


__all__ = [
    "ConditionalAccuracy",
    "Extractor",
    "ExtractorFID",
    "ExtractorIS",
    "ImageStatistics",
    "InceptionExtractor",
    "Metric",
    "PixelFeatures",
    "ReconstructionSSIM",
    "metric_names",
]
