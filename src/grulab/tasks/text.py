"""Character-level language modelling on text that ships with Python: the ``pydoc_data`` topics.

Data: ``pydoc_data.topics.topics`` (the help texts behind ``help("assert")`` etc.), the topics
in sorted key order joined by newlines, about 465k characters of English prose and code. The
vocabulary is every character of that text, sorted (about 100). Fixed contiguous split: the
first 90 % of the characters train, the next 5 % valid, the last 5 % test. The exact text
depends on the Python version (the topics are regenerated for each release), so numbers are
comparable across runs on the same Python minor version only; ``describe()`` records it.

Metric: bits per character (bpc): the mean of ``-log2 p(c_t | c_<t)`` over the characters of
the split. The evaluation reads the split as ``S = eval_streams`` contiguous streams of
``n = (N - 1) // S`` characters in parallel, in chunks of ``seq_len`` with the state carried
across chunks; the ``n * S`` characters after the first are scored (up to ``S - 1`` at the end
are left out so the streams are equally long). Baseline: a unigram model (character
frequencies in the training split, add-one smoothed over the vocabulary) on the same
characters.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grulab.tasks.base import Batch, Task, check_batch_size, check_split, rank_share
from grulab.train.distributed import dist_info

SPLIT_FRACTIONS = (0.90, 0.05, 0.05)


def pydoc_text() -> str:
    """The text of the ``pydoc_data`` topics, sorted by key, joined by newlines."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def split_text(text: str) -> dict[str, str]:
    """The fixed contiguous 90/5/5 split."""
    n = len(text)
    a, b = int(n * SPLIT_FRACTIONS[0]), int(n * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


class TextTask(Task):
    """Next-character prediction with one-hot inputs (see the module docstring).

    Args:
        text: the corpus (default: :func:`pydoc_text`).
        seq_len: training windows have ``seq_len`` inputs (and ``seq_len`` targets); evaluation
            chunks have this length too.
        eval_streams: parallel streams in evaluation.
    """

    readout = "all"
    monitor = "valid_bpc"
    metric_doc = ("bits per character: mean of -log2 p(c_t | c_<t) over the split, read as parallel streams "
                  "with the state carried across chunks")

    def __init__(self, text: str | None = None, seq_len: int = 100, eval_streams: int = 32) -> None:
        text = pydoc_text() if text is None else text
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.vocab = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.vocab)}
        self.splits = {k: self.encode(v) for k, v in split_text(text).items()}
        if len(self.splits["train"]) <= seq_len + 1 or min(len(v) for v in self.splits.values()) < 2:
            raise ValueError(f"the text ({len(text)} characters) is too short for seq_len={seq_len}")
        self.seq_len, self.eval_streams = seq_len, eval_streams
        self.input_size = self.output_size = len(self.vocab)
        self.name = "text"

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def one_hot(self, ids: Tensor) -> Tensor:
        return F.one_hot(ids, len(self.vocab)).float()

    def batches(self, batch_size: int, seed: int) -> Callable[[int], Batch]:
        info = dist_info()
        check_batch_size(batch_size, info)
        train, L = self.splits["train"], self.seq_len

        def batch(step: int) -> Batch:
            g = torch.Generator().manual_seed(seed * 7_919 + step)
            starts = torch.randint(0, len(train) - L - 1, (batch_size,), generator=g)
            windows = rank_share(torch.stack([train[s: s + L + 1] for s in starts.tolist()]), info)
            ids = torch.stack(windows, dim=1)  # (L + 1, B)
            return Batch(self.one_hot(ids[:-1]), ids[1:], scale=info.world_size / (batch_size * L))

        return batch

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.x)  # (T, B, V)
        return F.cross_entropy(logits.flatten(0, 1), batch.y.flatten(), reduction="sum") * batch.scale

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        inputs, targets = self._streams(check_split(split))  # (n, S) each
        device = next(model.parameters()).device
        n, streams = inputs.shape
        total, state = 0.0, None
        for a in range(0, n, self.seq_len):
            x = self.one_hot(inputs[a: a + self.seq_len]).to(device)
            logits, state = model.forward_with_state(x, state)
            total += float(F.cross_entropy(logits.flatten(0, 1).double(), targets[a: a + self.seq_len].flatten()
                                           .to(device), reduction="sum"))
        return {f"{split}_bpc": total / (n * streams) / math.log(2)}

    def _streams(self, split: str) -> tuple[Tensor, Tensor]:
        """Inputs and targets ``(n, S)``: stream ``s`` reads characters ``s*n .. s*n + n - 1``."""
        ids = self.splits[split]
        streams = max(1, min(self.eval_streams, (len(ids) - 1) // 2))
        n = (len(ids) - 1) // streams
        return ids[: n * streams].view(streams, n).t(), ids[1: 1 + n * streams].view(streams, n).t()

    def baselines(self) -> dict[str, dict[str, float]]:
        counts = torch.bincount(self.splits["train"], minlength=len(self.vocab)).double() + 1.0
        logp = (counts / counts.sum()).log()
        return {"unigram": {f"{s}_bpc": float(-logp[self._streams(s)[1]].mean() / math.log(2))
                            for s in self.splits}}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": "pydoc_data topics", "python": sys.version.split()[0],
                "vocab": len(self.vocab), "characters": {k: len(v) for k, v in self.splits.items()},
                "seq_len": self.seq_len, "metric": self.metric_doc}
