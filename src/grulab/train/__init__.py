"""Training: ``fit`` (evaluation, early stopping, weight noise, checkpoints, exact resume,
``torch.distributed``) and its configuration ``TrainConfig``."""

from grulab.train.config import RunConfig, TrainConfig
from grulab.train.loop import FitResult, fit, make_optimizer

__all__ = ["FitResult", "RunConfig", "TrainConfig", "fit", "make_optimizer"]
