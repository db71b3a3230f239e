"""What every real-data task shares: batches, the loss normalisation that makes DDP exact,
epoch shuffling, and finding data files.

A *task* (:class:`Task`) owns a data set with a fixed split and knows how to make training
batches, compute the training loss and evaluate a model on a split. ``grulab train`` and the lab
drive tasks through this interface only:

- ``task.batches(batch_size, seed)`` returns ``batches(step) -> Batch``, deterministic in
  ``(seed, step)``; under ``torch.distributed`` each rank gets its shard of the same global batch;
- ``task.loss(model, batch)`` is this rank's share of the global batch's mean loss (its sum
  divided by the global count, times the number of ranks), so that the gradient averaged by
  ``DistributedDataParallel`` is the gradient of the global mean: the same as one process;
- ``task.evaluate(model, split)`` returns metrics named ``<split>_<metric>``;
- ``task.baselines()`` returns the scores of the task's reference predictors on every split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from grulab.train.distributed import DistInfo, dist_info, shard

SPLITS = ("train", "valid", "test")
DATA_ENV = "GRULAB_DATA"


@dataclass
class Batch:
    """A padded, time-major batch.

    Attributes:
        x: inputs ``(T, B, I)``.
        y: targets; shape and meaning are the task's (``(T, B, O)``, ``(B,)``...).
        lengths: ``(B,)`` true lengths, or ``None`` when every sequence fills ``T``.
        scale: multiply this rank's summed loss by ``scale`` to get its share of the global mean
            (``world_size / global count``; ``1 / count`` in a single process).
    """

    x: Tensor
    y: Tensor
    lengths: Tensor | None = None
    scale: float = 1.0
    extra: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), self.y.to(device), None if self.lengths is None else self.lengths.to(device),
                     self.scale, {k: v.to(device) for k, v in self.extra.items()})

    @property
    def mask(self) -> Tensor:
        """``(T, B)`` boolean: True at the valid (unpadded) steps."""
        T, B = self.x.shape[0], self.x.shape[1]
        if self.lengths is None:
            return torch.ones(T, B, dtype=torch.bool, device=self.x.device)
        return torch.arange(T, device=self.x.device)[:, None] < self.lengths.to(self.x.device)[None, :]


class Task:
    """Base class of the real-data tasks (see the module docstring for the contract).

    Subclasses set ``name``, ``input_size``, ``output_size``, ``readout`` (``"all"`` or
    ``"last"`` for :class:`grulab.models.SequenceModel`), ``monitor`` (the validation metric
    that early stopping watches, smaller is better) and ``metric_doc`` (the exact definition of
    the reported metric), and implement the four methods.
    """

    name: str = ""
    input_size: int = 0
    output_size: int = 0
    readout: str = "all"
    monitor: str = "valid_loss"
    metric_doc: ClassVar[str] = ""

    def batches(self, batch_size: int, seed: int) -> Callable[[int], Batch]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        raise NotImplementedError

    def baselines(self) -> dict[str, dict[str, float]]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Sizes and split statistics for logs and reports."""
        return {"task": self.name, "input_size": self.input_size, "output_size": self.output_size,
                "readout": self.readout, "monitor": self.monitor}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS!r}, got {split!r}")
    return split


def check_batch_size(batch_size: Any, info: DistInfo | None = None) -> int:
    info = info or dist_info()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size < info.world_size:
        raise ValueError(f"batch_size ({batch_size}) must be at least the number of processes ({info.world_size})")
    return batch_size


def epoch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The item indices of the global batch at ``step``: epochs of seeded permutations of ``range(n)``.

    The stream of items is ``perm(seed, 0) ++ perm(seed, 1) ++ ...``; the batch at ``step`` is
    its slice ``[step * batch_size, (step + 1) * batch_size)`` (a batch may straddle two epochs).
    Any step can be computed directly, which makes resuming trivial.
    """
    start, out = step * batch_size, []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset: offset + batch_size - len(out)].tolist())
    return out


def rank_share(items: Sequence[Any], info: DistInfo | None = None) -> list[Any]:
    """This rank's contiguous part of a global batch's items."""
    return list(items[shard(len(items), info)])


def pad_sequences(seqs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ``(T_i, F)`` tensors into ``(T_max, B, F)`` (zeros after each end) and their lengths."""
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64)
    out = torch.zeros(int(lengths.max()), len(seqs), *seqs[0].shape[1:], dtype=seqs[0].dtype)
    for b, s in enumerate(seqs):
        out[: s.shape[0], b] = s
    return out, lengths


def find_data(relative: str, path: str | os.PathLike | None = None) -> Path:
    """Locate a data file: ``path`` if given, else ``$GRULAB_DATA/<relative>``, else
    ``../shared/data/<relative>`` beside the repository root or the current directory.

    ``path`` may name the file itself or a folder that holds ``relative`` (or its file name).
    Raises ``FileNotFoundError`` listing every place that was tried.
    """
    tried: list[Path] = []
    name = Path(relative).name
    if path is not None:
        p = Path(path).expanduser()
        for candidate in (p, p / relative, p / name):
            tried.append(candidate)
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{name} not found at the given path; tried: {', '.join(map(str, tried))}")
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    repo_root = Path(__file__).resolve().parents[3]
    roots += [repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for root in roots:
        candidate = root / relative
        tried.append(candidate)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{name} not found; tried: {', '.join(map(str, tried))}. Pass its path (--data-path) or set "
        f"{DATA_ENV} to the folder that holds {relative}.")
