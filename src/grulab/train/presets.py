"""Named training protocols (``grulab train --preset NAME``) and the default one for each data set.

A preset is ``{"run": RunConfig keys, "train": TrainConfig keys}``; flags and config files
override it. Only ``chung2014`` follows a paper; the others are grulab's own budgets, sized so a run
takes minutes on two CPU cores.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Chung et al. 2014, polyphonic music (their section 4.2): one recurrent layer of ~20k parameters,
    # RMSProp, gradient-norm clipping at 1, weight noise of std 0.075, early stopping on valid. The
    # learning rate, batch size and budget are ours (the paper does not report them).
    "chung2014": {
        "run": {"params": 20_000, "num_layers": 1, "batch_size": 16},
        "train": {"optimizer": "rmsprop", "lr": 1e-3, "clip": 1.0, "weight_noise": 0.075, "steps": 5000,
                  "eval_every": 50, "patience": 20, "log_every": 10, "checkpoint_every": 500, "threads": 1},
    },
    "digits": {
        "run": {"params": 20_000, "batch_size": 32},
        "train": {"optimizer": "adam", "lr": 2e-3, "clip": 1.0, "steps": 1500, "eval_every": 100, "patience": 5,
                  "checkpoint_every": 500, "threads": 1},
    },
    "text": {
        "run": {"params": 20_000, "batch_size": 32, "seq_len": 100},
        "train": {"optimizer": "adam", "lr": 3e-3, "clip": 1.0, "steps": 2000, "eval_every": 200, "patience": 5,
                  "checkpoint_every": 500, "threads": 1},
    },
    "forecast": {
        "run": {"params": 20_000, "batch_size": 32, "seq_len": 48},
        "train": {"optimizer": "adam", "lr": 3e-3, "clip": 1.0, "steps": 1500, "eval_every": 100, "patience": 5,
                  "checkpoint_every": 500, "threads": 1},
    },
}

DEFAULT_PRESET = {"jsb": "chung2014", "nottingham": "chung2014", "musedata": "chung2014", "piano": "chung2014",
                  "chorales21": "chung2014", "text": "text", "digits-pixel": "digits", "digits-row": "digits",
                  "co2": "forecast", "sunspots": "forecast"}


def preset_for(data: str) -> dict[str, dict[str, Any]]:
    """The default protocol of a data set (a copy, safe to modify)."""
    name = DEFAULT_PRESET.get(data)
    if name is None:
        raise ValueError(f"no preset for data {data!r}; known: {sorted(DEFAULT_PRESET)}")
    return {part: dict(values) for part, values in PRESETS[name].items()}
