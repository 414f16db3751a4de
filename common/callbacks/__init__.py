"""Callbacks shared by every project. Each one is a plain Lightning ``Callback``."""

from common.callbacks.finetune import FreezeUnfreeze
from common.callbacks.grad_norm import GradNormLogger
from common.callbacks.media import MediaLogger
from common.callbacks.progressive import ProgressiveResolution
from common.callbacks.rng import ResumeRNG
from common.callbacks.summary import MetricSummary

__all__ = ["FreezeUnfreeze", "GradNormLogger", "MediaLogger", "MetricSummary", "ProgressiveResolution", "ResumeRNG"]
