"""The real-data tasks by name, as ``grulab train --data NAME`` and the lab choose them."""

from __future__ import annotations

import os

from grulab.tasks.base import Task

DATA = {
    "jsb": "JSB Chorales (Boulanger-Lewandowski et al. 2012 split; needs the .mat file)",
    "nottingham": "Nottingham folk tunes (needs the .mat file)",
    "musedata": "MuseData classical pieces (needs the .mat file)",
    "piano": "Piano-midi.de pieces (needs the .mat file)",
    "chorales21": "Bach chorales bundled with music21 (offline; not comparable to the published numbers)",
    "text": "characters of Python's pydoc_data topics (offline)",
    "digits-pixel": "scikit-learn 8x8 digits, one pixel per step (offline)",
    "digits-row": "scikit-learn 8x8 digits, one row per step (offline)",
    "co2": "Mauna Loa CO2, monthly, from statsmodels (offline)",
    "sunspots": "yearly sunspot numbers from statsmodels (offline)",
}


def make_task(data: str, *, data_path: str | os.PathLike | None = None, seq_len: int | None = None,
              horizon: int | None = None) -> Task:
    """Build the task ``data`` names (one of ``DATA``).

    Args:
        data: the task's name.
        data_path: where the polyphonic ``.mat`` files are (music tasks only).
        seq_len: music: crop training sequences to this many frames; text: window length;
            forecasting: training window length. ``None``: the task's default.
        horizon: forecasting only: how many steps ahead (default: one season).
    """
    if data not in DATA:
        raise ValueError(f"data must be one of {sorted(DATA)!r}, got {data!r}")
    if horizon is not None and data not in ("co2", "sunspots"):
        raise ValueError(f"horizon applies to the forecasting tasks (co2, sunspots), not {data!r}")
    if data_path is not None and data in ("text", "digits-pixel", "digits-row", "co2", "sunspots", "chorales21"):
        raise ValueError(f"data_path applies to the polyphonic music files, not {data!r}")
    if data in ("jsb", "nottingham", "musedata", "piano", "chorales21"):
        from grulab.tasks.music import MusicTask, load_music

        return MusicTask(load_music(data, data_path), data, crop=seq_len)
    if data == "text":
        from grulab.tasks.text import TextTask

        return TextTask(seq_len=seq_len or 100)
    if data.startswith("digits-"):
        if seq_len is not None:
            raise ValueError("seq_len does not apply to the digits tasks (their length is fixed: 64 or 8)")
        from grulab.tasks.digits import DigitsTask

        return DigitsTask(data.removeprefix("digits-"))
    from grulab.tasks.timeseries import ForecastTask

    return ForecastTask(data, horizon=horizon, window=seq_len or 48)
