"""Multi-step forecasting on time series bundled with ``statsmodels``.

Series:

- ``"co2"``: Mauna Loa atmospheric CO2 (``statsmodels.datasets.co2``), weekly 1958-2001,
  averaged to calendar months (526 values; the few months without a reading are linearly
  interpolated); season 12, default horizon 12.
- ``"sunspots"``: yearly mean sunspot numbers 1700-2008 (``statsmodels.datasets.sunspots``,
  309 values); the solar cycle is about 11 years: season 11, default horizon 11.

Fixed chronological split: the first 70 % of the values train, the next 15 % valid, the last
15 % test. Values are standardised with the training part's mean and standard deviation.

Task: at every step ``t`` the model has read ``y_1 .. y_t`` and outputs the ``H`` next values
``y_{t+1} .. y_{t+H}`` (``readout="all"``, ``H`` outputs). Training uses windows of
``window`` steps from the training part. A split is scored on every forecast origin ``t`` whose
``H`` targets all lie in the split and ``t >= season - 1`` (the model reads the whole series
from its start, so valid and test forecasts see their true history).

Metric: ``mse``, the mean squared error over those origins and the ``H`` horizons, in the
series' own units (squared), and ``rmse``. Baselines on the same origins: ``last value``
(``y_{t+h} = y_t``) and ``seasonal`` (``y_{t+h} = y_{t+h-m*ceil(h/m)}``, the value one season
before).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grulab.tasks.base import Batch, Task, check_batch_size, check_split, rank_share
from grulab.train.distributed import dist_info

SERIES = {"co2": 12, "sunspots": 11}  # name -> season
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


def load_series(name: str) -> np.ndarray:
    """The raw series as float64 (see the module docstring)."""
    if name not in SERIES:
        raise ValueError(f"series must be one of {sorted(SERIES)!r}, got {name!r}")
    import statsmodels.api as sm

    if name == "sunspots":
        return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    weekly = sm.datasets.co2.load_pandas().data["co2"]
    return weekly.resample("MS").mean().interpolate("linear").to_numpy(dtype=np.float64)


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """``{split: (start, end)}`` indices of the chronological 70/15/15 split."""
    a, b = int(n * SPLIT_FRACTIONS[0]), int(n * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))
    return {"train": (0, a), "valid": (a, b), "test": (b, n)}


class ForecastTask(Task):
    """Forecast the next ``horizon`` values at every step (see the module docstring)."""

    input_size = 1
    readout = "all"
    monitor = "valid_mse"
    metric_doc = "mse: mean squared error over forecast origins and horizons, in the series' units squared"

    def __init__(self, series: str = "co2", horizon: int | None = None, window: int = 48) -> None:
        self.season = SERIES.get(series, 0)
        raw = load_series(series)
        self.horizon = horizon or self.season
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.bounds = split_bounds(len(raw))
        if window < 1 or self.bounds["train"][1] - window - self.horizon < 1:
            raise ValueError(f"window must be >= 1 and leave room for horizon {self.horizon} in the "
                             f"{self.bounds['train'][1]} training values, got {window}")
        train = raw[: self.bounds["train"][1]]
        self.mean, self.std = float(train.mean()), float(train.std())
        self.raw = torch.tensor(raw)
        self.z = ((self.raw - self.mean) / self.std).float()
        self.window, self.name, self.output_size = window, series, self.horizon

    def targets(self, start: int, length: int) -> Tensor:
        """``(length, H)``: row ``i`` holds ``z[start+i+1 .. start+i+H]`` (standardised)."""
        idx = torch.arange(start, start + length)[:, None] + torch.arange(1, self.horizon + 1)[None, :]
        return self.z[idx]

    def batches(self, batch_size: int, seed: int) -> Callable[[int], Batch]:
        info = dist_info()
        check_batch_size(batch_size, info)
        n_train, W, H = self.bounds["train"][1], self.window, self.horizon

        def batch(step: int) -> Batch:
            g = torch.Generator().manual_seed(seed * 7_919 + step)
            starts = rank_share(torch.randint(0, n_train - W - H + 1, (batch_size,), generator=g).tolist(), info)
            x = torch.stack([self.z[s: s + W] for s in starts], dim=1)[..., None]  # (W, B, 1)
            y = torch.stack([self.targets(s, W) for s in starts], dim=1)  # (W, B, H)
            return Batch(x, y, scale=info.world_size / (batch_size * W * H))

        return batch

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return F.mse_loss(model(batch.x), batch.y, reduction="sum") * batch.scale

    def origins(self, split: str) -> Tensor:
        """Forecast origins ``t`` (0-based index of the last value read) scored on ``split``."""
        start, end = self.bounds[check_split(split)]
        # from season - 1 on, so the seasonal baseline has a value one season back
        return torch.arange(max(start - 1, self.season - 1), end - self.horizon)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        origins = self.origins(split)
        end = int(origins[-1]) + 1
        device = next(model.parameters()).device
        pred = model(self.z[:end, None, None].to(device))[:, 0].double().cpu()  # (end, H) standardised
        forecast = pred[origins] * self.std + self.mean
        truth = self.targets(0, end).double()[origins] * self.std + self.mean
        mse = float(((forecast - truth) ** 2).mean())
        return {f"{split}_mse": mse, f"{split}_rmse": math.sqrt(mse)}

    def baselines(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {"last value": {}, "seasonal": {}}
        h = torch.arange(1, self.horizon + 1)
        for split in self.bounds:
            t = self.origins(split)[:, None]
            truth = self.raw[t + h]
            last = self.raw[t].expand_as(truth)
            seasonal = self.raw[t + h - self.season * torch.ceil(h / self.season).long()]
            for name, pred in (("last value", last), ("seasonal", seasonal)):
                mse = float(((pred - truth) ** 2).mean())
                out[name][f"{split}_mse"], out[name][f"{split}_rmse"] = mse, math.sqrt(mse)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": self.name, "season": self.season, "horizon": self.horizon,
                "window": self.window, "bounds": self.bounds, "metric": self.metric_doc}
