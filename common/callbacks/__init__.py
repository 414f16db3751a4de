"""Callbacks shared by every project. Each one is a plain Lightning ``Callback``."""

from common.callbacks.checkpoint import LatestCheckpoint
from common.callbacks.finetune import FreezeUnfreeze
from common.callbacks.grad_norm import GradNormLogger
from common.callbacks.media import MediaLogger
from common.callbacks.nan_guard import NaNGuard
from common.callbacks.progressive import ProgressiveResolution
from common.callbacks.rng import ResumeRNG
from common.callbacks.summary import MetricSummary

__all__ = [
    "FreezeUnfreeze",
    "GradNormLogger",
    "LatestCheckpoint",
    "MediaLogger",
    "MetricSummary",
    "NaNGuard",
    "ProgressiveResolution",
    "ResumeRNG",
]
