"""Polyphonic music modelling, the benchmark of Chung et al. (2014).

Data (88-key piano rolls, one row per time step, 1 = key sounding):

- ``"jsb"``, ``"nottingham"``, ``"musedata"``, ``"piano"``: the four data sets of
  Boulanger-Lewandowski, Bengio and Vincent (ICML 2012) with their standard train/valid/test
  splits, read from the ``.mat`` files they are distributed as (not part of grulab: pass their
  folder, set ``GRULAB_DATA``, or keep them at ``../shared/data/polyphonic/``; see
  :func:`grulab.tasks.base.find_data`).
- ``"chorales21"``: the offline fallback, the Bach chorales inside the ``music21`` package
  (its chorale iterator, 371 chorales in Riemenschneider order) as piano rolls with one row per
  quarter note (a key is on in row ``q`` when a note sounds at quarter ``q``). Fixed split by
  position ``i`` in that order: ``i % 5`` in {0, 1, 2} train, 3 valid, 4 test. These are other
  encodings of other files than the benchmark's, so **its numbers are not comparable to the
  published ones**.

Protocol (Chung et al. 2014; metric as Boulanger-Lewandowski et al. 2012): the model reads the
frames ``x_1 .. x_{t-1}`` (an all-zero frame stands before the first) and outputs 88 logits for
frame ``x_t``, one independent Bernoulli per key. The metric is the negative log-likelihood in
nats per time step: the Bernoulli NLL summed over the 88 keys, summed over every frame of every
sequence of the split (the first frame included), divided by the number of frames. The baseline
is a per-key unigram: each key on with its frequency in the training frames (about 11.06 on the
JSB test split).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grulab.tasks.base import (
    Batch,
    Task,
    check_batch_size,
    check_split,
    epoch_indices,
    find_data,
    pad_sequences,
    rank_share,
)
from grulab.train.distributed import dist_info

KEYS = 88
LOWEST_MIDI = 21  # A0, the lowest piano key
POLYPHONIC = {
    "jsb": "polyphonic/JSB_Chorales.mat",
    "nottingham": "polyphonic/Nottingham.mat",
    "musedata": "polyphonic/MuseData.mat",
    "piano": "polyphonic/Piano_midi.mat",
}
MUSIC21 = "chorales21"
MUSIC_DATASETS = (*POLYPHONIC, MUSIC21)
_MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
Rolls = dict[str, list[Tensor]]


def load_polyphonic(name: str, path: str | os.PathLike | None = None) -> Rolls:
    """One of the four benchmark data sets: ``{"train"|"valid"|"test": [(T_i, 88) float32 rolls]}``.

    Args:
        name: ``"jsb"``, ``"nottingham"``, ``"musedata"`` or ``"piano"``.
        path: the ``.mat`` file or a folder holding it (or holding ``polyphonic/``); default:
            ``$GRULAB_DATA``, then ``../shared/data`` (see :func:`grulab.tasks.base.find_data`).

    Raises ``FileNotFoundError`` (with where it looked) if the file is absent, ``ValueError`` if
    it is not such a file.
    """
    if name not in POLYPHONIC:
        raise ValueError(f"name must be one of {sorted(POLYPHONIC)!r}, got {name!r}")
    from scipy.io import loadmat

    file = find_data(POLYPHONIC[name], path)
    try:
        mat = loadmat(file)
    except (ValueError, OSError) as e:  # scipy raises ValueError on a damaged file
        raise ValueError(f"{file} is not a readable MATLAB file: {e}") from e
    out: Rolls = {}
    for split, key in _MAT_KEYS.items():
        if key not in mat:
            raise ValueError(f"{file} has no {key!r} array; is it one of the Boulanger-Lewandowski files?")
        rolls = []
        for seq in mat[key].ravel():
            if seq.ndim != 2 or seq.shape[1] != KEYS:
                raise ValueError(f"{file}: a {split} sequence has shape {seq.shape}, expected (T, {KEYS})")
            rolls.append(torch.from_numpy(seq.astype("float32")))
        out[split] = rolls
    return out


def music21_chorale_names() -> list[str]:
    """The chorales of ``music21``'s chorale iterator, in its (Riemenschneider) order."""
    from music21 import corpus

    return list(corpus.chorales.Iterator(returnType="filename"))


def chorale_roll(score: Any) -> Tensor:
    """A ``music21`` score as a ``(quarters, 88)`` piano roll, one row per quarter note."""
    T = max(1, math.ceil(float(score.highestTime)))
    roll = torch.zeros(T, KEYS)
    for n in score.flatten().notes:
        start, end = float(n.offset), float(n.offset) + float(n.quarterLength)
        rows = list(range(math.ceil(start), min(T, math.ceil(end))))  # the quarters q with start <= q < end
        for p in n.pitches:
            key = p.midi - LOWEST_MIDI
            if 0 <= key < KEYS:
                roll[rows, key] = 1.0
    return roll


def music21_split(i: int) -> str:
    """The split of the ``i``-th chorale (0-based, iterator order): 60/20/20 by ``i % 5``."""
    return ("train", "train", "train", "valid", "test")[i % 5]


def load_music21_chorales(limit: int | None = None, cache_dir: str | os.PathLike | None = None) -> Rolls:
    """The offline fallback: ``music21``'s Bach chorales as 88-key quarter-note rolls.

    Args:
        limit: parse only the first ``limit`` chorales (for tests; the split of each chorale
            does not depend on ``limit``).
        cache_dir: where to keep the parsed rolls (parsing all 371 takes about a minute); default
            ``$GRULAB_CACHE`` or ``~/.cache/grulab``. Not used with ``limit``.
    """
    from grulab.io import atomic_write_bytes, decode, encode

    names = music21_chorale_names()
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive int or None, got {limit}")
        names = names[:limit]
    cache = None
    if limit is None:
        root = Path(cache_dir or os.environ.get("GRULAB_CACHE") or Path.home() / ".cache" / "grulab")
        cache = root / "music21_chorales_v1.safetensors"
        if cache.is_file():
            try:
                tensors, header = decode(cache.read_bytes(), str(cache))
                if header.get("names") == names:
                    return _split_rolls([tensors[f"roll.{i}"] for i in range(len(names))])
            except (ValueError, KeyError):
                pass  # a damaged or stale cache is rebuilt
    from music21 import corpus

    rolls = [chorale_roll(corpus.parse(name)) for name in names]
    if cache is not None:
        header = {"format": "grulab", "version": 1, "kind": "music21-chorales", "names": names}
        atomic_write_bytes(cache, encode({f"roll.{i}": r for i, r in enumerate(rolls)}, header))
    return _split_rolls(rolls)


def _split_rolls(rolls: list[Tensor]) -> Rolls:
    out: Rolls = {"train": [], "valid": [], "test": []}
    for i, roll in enumerate(rolls):
        out[music21_split(i)].append(roll)
    return out


def load_music(name: str, path: str | os.PathLike | None = None) -> Rolls:
    """Any music data set by name: the four benchmark sets or ``"chorales21"``."""
    if name == MUSIC21:
        return load_music21_chorales()
    return load_polyphonic(name, path)


def unigram_probabilities(rolls: list[Tensor], eps: float = 1e-6) -> Tensor:
    """Per-key frequency of "on" over all frames, clamped to ``[eps, 1 - eps]``."""
    return torch.cat(rolls).double().mean(0).clamp(eps, 1 - eps)


def bernoulli_nll(rolls: list[Tensor], p: Tensor) -> float:
    """Nats per frame of independent per-key Bernoullis ``p`` on ``rolls`` (summed over keys)."""
    frames = torch.cat(rolls).double()
    nll = -(frames * p.log() + (1 - frames) * (1 - p).log()).sum()
    return float(nll / frames.shape[0])


def shift_right(roll: Tensor) -> Tensor:
    """The model's input for ``roll``: an all-zero frame, then every frame but the last."""
    return torch.cat([torch.zeros_like(roll[:1]), roll[:-1]])


class MusicTask(Task):
    """Next-frame prediction on 88-key piano rolls (see the module docstring for the metric).

    Args:
        rolls: ``{"train", "valid", "test"}`` lists of ``(T_i, 88)`` rolls.
        name: a label (the data set name).
        crop: train on random windows of at most this many frames (``None``: whole sequences;
            evaluation always uses whole sequences). Useful for the long Piano-midi and
            MuseData pieces on a CPU.
        eval_batch: sequences per evaluation batch.
    """

    input_size = KEYS
    output_size = KEYS
    readout = "all"
    monitor = "valid_nll"
    metric_doc = ("NLL per time step in nats: Bernoulli NLL summed over the 88 keys, summed over all frames of the "
                  "split (first frame included, predicted from an all-zero input), divided by the number of frames")

    def __init__(self, rolls: Rolls, name: str = "music", crop: int | None = None, eval_batch: int = 64) -> None:
        missing = [s for s in ("train", "valid", "test") if not rolls.get(s)]
        if missing:
            raise ValueError(f"rolls must have non-empty train, valid and test lists; empty or missing: {missing}")
        if crop is not None and crop < 2:
            raise ValueError(f"crop must be >= 2 or None, got {crop}")
        self.rolls, self.name, self.crop, self.eval_batch = rolls, name, crop, eval_batch
        self._unigram = unigram_probabilities(rolls["train"])

    def batches(self, batch_size: int, seed: int) -> Callable[[int], Batch]:
        info = dist_info()
        check_batch_size(batch_size, info)
        train = self.rolls["train"]

        def batch(step: int) -> Batch:
            idx = epoch_indices(len(train), batch_size, seed, step)
            seqs = [train[i] for i in idx]
            if self.crop is not None:  # a window per sequence, drawn from (seed, step)
                g = torch.Generator().manual_seed(seed * 7_919 + step)
                starts = [int(torch.randint(0, max(1, s.shape[0] - self.crop + 1), (1,), generator=g))
                          for s in seqs]
                seqs = [s[a: a + self.crop] for s, a in zip(seqs, starts, strict=True)]
            frames = sum(s.shape[0] for s in seqs)  # the global count: the same on every rank
            mine = rank_share(seqs, info)
            x, lengths = pad_sequences([shift_right(s) for s in mine])
            y, _ = pad_sequences(mine)
            return Batch(x, y, lengths, scale=info.world_size / frames)

        return batch

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.x, lengths=batch.lengths)  # (T, B, 88)
        nll = F.binary_cross_entropy_with_logits(logits, batch.y, reduction="none").sum(-1)  # (T, B)
        return (nll * batch.mask).sum() * batch.scale

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        check_split(split)
        seqs = sorted(self.rolls[split], key=lambda s: s.shape[0])  # similar lengths share a batch
        device = next(model.parameters()).device
        total, frames = 0.0, 0
        for i in range(0, len(seqs), self.eval_batch):
            chunk = seqs[i: i + self.eval_batch]
            x, lengths = pad_sequences([shift_right(s) for s in chunk])
            y, _ = pad_sequences(chunk)
            b = Batch(x, y, lengths).to(device)
            logits = model(b.x, lengths=b.lengths)
            nll = F.binary_cross_entropy_with_logits(logits.double(), b.y.double(), reduction="none").sum(-1)
            total += float((nll * b.mask).sum())
            frames += int(lengths.sum())
        return {f"{split}_nll": total / frames}

    def baselines(self) -> dict[str, dict[str, float]]:
        return {"unigram": {f"{s}_nll": bernoulli_nll(self.rolls[s], self._unigram) for s in self.rolls}}

    def describe(self) -> dict[str, Any]:
        stats = {s: {"sequences": len(r), "frames": sum(x.shape[0] for x in r)} for s, r in self.rolls.items()}
        return {**super().describe(), "data": self.name, "splits": stats, "crop": self.crop,
                "metric": self.metric_doc}
