"""Polyphonic music: the benchmark loader (skips without the data), the music21 fallback, the
task's batches, loss, metric and DDP sharding."""

import math

import numpy as np
import pytest
import torch
from scipy.io import savemat
from torch.nn import functional as F

from grulab.tasks import music
from grulab.tasks.base import find_data
from grulab.tasks.music import (
    KEYS,
    MusicTask,
    bernoulli_nll,
    chorale_roll,
    load_music21_chorales,
    load_polyphonic,
    music21_split,
    shift_right,
    unigram_probabilities,
)
from grulab.train.distributed import DistInfo
from tests.tasks.oracles import ConstantLogits


def _jsb():
    try:
        return load_polyphonic("jsb")
    except FileNotFoundError as e:
        pytest.skip(f"JSB Chorales not available: {e}")


def fake_rolls(seed=0, sizes=(6, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in zip(("train", "valid", "test"), sizes, strict=True):
        out[split] = [(torch.rand(int(torch.randint(3, 12, (1,), generator=g)), KEYS, generator=g) < 0.05).float()
                      for _ in range(n)]
    return out


# --- the benchmark files ----------------------------------------------------------------------


def test_jsb_standard_split_and_unigram_baseline():
    rolls = _jsb()
    stats = {s: (len(r), sum(x.shape[0] for x in r)) for s, r in rolls.items()}
    assert stats == {"train": (229, 13807), "valid": (76, 4602), "test": (77, 4725)}
    assert all(x.shape[1] == KEYS and set(x.unique().tolist()) <= {0.0, 1.0} for r in rolls.values() for x in r)
    base = MusicTask(rolls, "jsb").baselines()["unigram"]
    print(base)
    assert base["test_nll"] == pytest.approx(11.06, abs=0.01)  # ../shared/data/README.md


@pytest.mark.parametrize("name, counts", [
    ("nottingham", {"train": (694, 176_561), "valid": (173, 45_513), "test": (170, 44_463)}),
    ("musedata", {"train": (524, 245_202), "valid": (135, 82_755), "test": (124, 64_339)}),
    ("piano", {"train": (87, 75_911), "valid": (12, 8_540), "test": (25, 19_036)}),
])
def test_other_benchmarks_match_their_documented_sizes(name, counts):
    try:
        rolls = load_polyphonic(name)
    except FileNotFoundError as e:
        pytest.skip(f"{name} not available: {e}")
    assert {s: (len(r), sum(x.shape[0] for x in r)) for s, r in rolls.items()} == counts  # ../shared/data/README.md


def test_find_data_order_and_errors(tmp_path, monkeypatch):
    target = tmp_path / "polyphonic" / "JSB_Chorales.mat"
    target.parent.mkdir()
    rolls = fake_rolls()
    savemat(target, {f"{s}data": np.array([r.numpy().astype(np.uint8) for r in v] + [None], dtype=object)[:-1]
                     for s, v in rolls.items()})
    # explicit path: the file, its folder, or the data root
    assert find_data("polyphonic/JSB_Chorales.mat", target) == target
    assert find_data("polyphonic/JSB_Chorales.mat", target.parent) == target
    assert find_data("polyphonic/JSB_Chorales.mat", tmp_path) == target
    with pytest.raises(FileNotFoundError, match="not found at the given path"):
        find_data("polyphonic/JSB_Chorales.mat", tmp_path / "nowhere")
    monkeypatch.setenv("GRULAB_DATA", str(tmp_path))
    loaded = load_polyphonic("jsb")
    for split in rolls:
        assert len(loaded[split]) == len(rolls[split])
        for a, b in zip(loaded[split], rolls[split], strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="name must be one of"):
        load_polyphonic("bach")


def test_missing_file_error_lists_places(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="tried"):
        load_polyphonic("nottingham", tmp_path / "absent")
    monkeypatch.setenv("GRULAB_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        load_polyphonic("nottingham")
    except FileNotFoundError as e:  # the shared data may exist beside the repository: then it loads
        assert str(tmp_path) in str(e) and "GRULAB_DATA" in str(e)


def test_damaged_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "JSB_Chorales.mat"
    bad.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        load_polyphonic("jsb", bad)


# --- the music21 fallback ---------------------------------------------------------------------


def test_music21_chorales_slice():
    rolls = load_music21_chorales(limit=5)
    assert [len(rolls[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert [music21_split(i) for i in range(5)] == ["train", "train", "train", "valid", "test"]
    for r in rolls["train"]:
        assert r.shape[1] == KEYS and r.shape[0] > 8
        voices = r.sum(1)
        assert set(r.unique().tolist()) <= {0.0, 1.0}
        assert voices.max() <= 4 and voices.float().mean() > 3  # four-part chorales, one row per quarter


def test_chorale_roll_samples_each_quarter():
    from music21 import note, stream

    s = stream.Stream()
    s.insert(0.0, note.Note("C4", quarterLength=2.0))  # sounds at quarters 0 and 1
    s.insert(2.5, note.Note("A0", quarterLength=0.5))  # between beats: not sampled
    s.insert(3.0, note.Note("C8", quarterLength=1.0))  # the top key
    roll = chorale_roll(s)
    assert roll.shape == (4, KEYS)
    assert roll.nonzero().tolist() == [[0, 60 - 21], [1, 60 - 21], [3, 87]]


# --- the task ---------------------------------------------------------------------------------


def test_batches_are_shifted_padded_and_deterministic():
    task = MusicTask(fake_rolls(), "fake")
    b = task.batches(4, seed=3)(5)
    again = task.batches(4, seed=3)(5)
    assert torch.equal(b.x, again.x) and torch.equal(b.y, again.y)
    assert b.x.shape[1] == 4 and b.x.shape[2] == KEYS
    for j in range(4):
        n = int(b.lengths[j])
        assert torch.equal(b.x[:n, j], shift_right(b.y[:n, j]))
        assert b.x[0, j].sum() == 0 and b.y[n:, j].sum() == 0
    assert b.scale == pytest.approx(1 / int(b.lengths.sum()))
    # an epoch visits every training sequence once
    seen = torch.cat([task.batches(2, 3)(s).lengths for s in range(3)])
    assert sorted(seen.tolist()) == sorted(r.shape[0] for r in task.rolls["train"])


def test_loss_is_nll_per_frame():
    task = MusicTask(fake_rolls(), "fake")
    b = task.batches(3, seed=0)(0)
    torch.manual_seed(0)
    logits = torch.randn(KEYS)
    model = ConstantLogits(logits)
    frames = torch.cat([b.y[: int(n), j] for j, n in enumerate(b.lengths)])
    expected = F.binary_cross_entropy_with_logits(logits.expand_as(frames), frames, reduction="sum") / len(frames)
    assert task.loss(model, b).item() == pytest.approx(expected.item(), rel=1e-6)


def test_unigram_model_scores_the_unigram_baseline():
    rolls = fake_rolls()
    task = MusicTask(rolls, "fake", eval_batch=2)
    p = unigram_probabilities(rolls["train"])
    model = ConstantLogits(torch.log(p / (1 - p)))
    base = task.baselines()["unigram"]
    for split in ("train", "valid", "test"):
        got = task.evaluate(model, split)[f"{split}_nll"]
        print(split, got, base[f"{split}_nll"])
        assert got == pytest.approx(base[f"{split}_nll"], rel=1e-5)
    # a hand computation of one split
    frames = torch.cat(rolls["test"]).double()
    by_hand = -(frames * p.log() + (1 - frames) * (1 - p).log()).sum() / frames.shape[0]
    assert bernoulli_nll(rolls["test"], p) == pytest.approx(float(by_hand))


def test_ddp_shards_average_to_the_global_loss(monkeypatch):
    task = MusicTask(fake_rolls(), "fake")
    torch.manual_seed(1)
    model = ConstantLogits(torch.randn(KEYS))
    full = task.loss(model, task.batches(5, seed=2)(1)).item()
    losses = []
    for rank in range(2):
        monkeypatch.setattr(music, "dist_info", lambda rank=rank: DistInfo(rank, 2, rank))
        b = task.batches(5, seed=2)(1)
        assert b.x.shape[1] == (3 if rank == 0 else 2)
        losses.append(task.loss(model, b).item())
    assert sum(losses) / 2 == pytest.approx(full, rel=1e-6)


def test_crop_limits_training_windows():
    task = MusicTask(fake_rolls(), "fake", crop=4)
    b = task.batches(6, seed=0)(0)
    assert b.x.shape[0] <= 4 and int(b.lengths.max()) <= 4
    with pytest.raises(ValueError, match="crop"):
        MusicTask(fake_rolls(), "fake", crop=1)


def test_task_argument_errors():
    with pytest.raises(ValueError, match="non-empty train, valid and test"):
        MusicTask({"train": [], "valid": [], "test": []})
    task = MusicTask(fake_rolls(), "fake")
    with pytest.raises(ValueError, match="batch_size"):
        task.batches(0, 0)
    with pytest.raises(ValueError, match="split must be one of"):
        task.evaluate(ConstantLogits(torch.zeros(KEYS)), "dev")
    assert math.isclose(task.evaluate(ConstantLogits(torch.zeros(KEYS)), "valid")["valid_nll"], KEYS * math.log(2),
                        rel_tol=1e-9)
