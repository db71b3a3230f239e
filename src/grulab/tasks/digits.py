"""Sequential digits: scikit-learn's bundled 8x8 handwritten digits read as a sequence.

Data: ``sklearn.datasets.load_digits()`` (1,797 images of 8x8 pixels with values 0..16, ten
classes), scaled to [0, 1]. Two readings: ``"pixel"``, one pixel per step in row-major order
(64 steps of 1 input), and ``"row"``, one row per step (8 steps of 8 inputs). The model reads
the whole image and classifies it from its final state (``readout="last"``).

Fixed split: the images are permuted with ``numpy.random.default_rng(0)``; the first 1,077
train, the next 360 valid, the last 360 test.

Metrics: ``accuracy`` (share of images whose most likely class is the label) and ``nll`` (mean
cross-entropy in nats). Baselines: the majority class of the training split (accuracy) and the
class frequencies of the training split as a constant prediction (nll); chance is 10 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grulab.tasks.base import Batch, Task, check_batch_size, check_split, epoch_indices, rank_share
from grulab.train.distributed import dist_info

MODES = ("pixel", "row")
SPLIT_SIZES = (1077, 360, 360)
CLASSES = 10


def load_digits_split() -> dict[str, tuple[Tensor, Tensor]]:
    """``{split: (images (N, 8, 8) float32 in [0, 1], labels (N,) int64)}`` with the fixed split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)
    labels = torch.from_numpy(data.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    a, b = SPLIT_SIZES[0], SPLIT_SIZES[0] + SPLIT_SIZES[1]
    parts = {"train": order[:a], "valid": order[a:b], "test": order[b:]}
    return {k: (images[idx], labels[idx]) for k, idx in parts.items()}


def as_sequence(images: Tensor, mode: str) -> Tensor:
    """``(N, 8, 8)`` images as time-major sequences: ``(64, N, 1)`` (pixel) or ``(8, N, 8)`` (row)."""
    if mode == "pixel":
        return images.reshape(images.shape[0], 64, 1).transpose(0, 1)
    return images.transpose(0, 1)


class DigitsTask(Task):
    """Classify an 8x8 digit read pixel by pixel or row by row (see the module docstring)."""

    output_size = CLASSES
    readout = "last"
    monitor = "valid_nll"
    metric_doc = "accuracy: share of correctly classified images; nll: mean cross-entropy in nats"

    def __init__(self, mode: str = "pixel", eval_batch: int = 512) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES!r}, got {mode!r}")
        self.mode, self.eval_batch = mode, eval_batch
        self.name = f"digits-{mode}"
        self.input_size = 1 if mode == "pixel" else 8
        self.data = {k: (as_sequence(x, mode), y) for k, (x, y) in load_digits_split().items()}

    def batches(self, batch_size: int, seed: int) -> Callable[[int], Batch]:
        info = dist_info()
        check_batch_size(batch_size, info)
        x, y = self.data["train"]

        def batch(step: int) -> Batch:
            idx = torch.tensor(rank_share(epoch_indices(y.shape[0], batch_size, seed, step), info))
            return Batch(x[:, idx], y[idx], scale=info.world_size / batch_size)

        return batch

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(model(batch.x), batch.y, reduction="sum") * batch.scale

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y = self.data[check_split(split)]
        device = next(model.parameters()).device
        nll, correct = 0.0, 0
        for a in range(0, y.shape[0], self.eval_batch):
            logits = model(x[:, a: a + self.eval_batch].to(device)).double()
            target = y[a: a + self.eval_batch].to(device)
            nll += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
        return {f"{split}_accuracy": correct / y.shape[0], f"{split}_nll": nll / y.shape[0]}

    def baselines(self) -> dict[str, dict[str, float]]:
        counts = torch.bincount(self.data["train"][1], minlength=CLASSES).double()
        prior = counts / counts.sum()
        majority = int(counts.argmax())
        out: dict[str, dict[str, float]] = {"majority class": {}, "class prior": {}, "chance": {}}
        for s, (_, y) in self.data.items():
            out["majority class"][f"{s}_accuracy"] = float((y == majority).double().mean())
            out["class prior"][f"{s}_nll"] = float(-prior.log()[y].mean())
            out["chance"][f"{s}_accuracy"] = 1 / CLASSES
            out["chance"][f"{s}_nll"] = math.log(CLASSES)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": "sklearn digits", "mode": self.mode,
                "steps": self.data["train"][0].shape[0], "sizes": {k: int(v[1].shape[0]) for k, v in self.data.items()},
                "metric": self.metric_doc}
