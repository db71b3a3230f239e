"""The training loop: configuration, early stopping, weight noise, files, and exact resume."""

import json
import math

import pytest
import torch
from torch import nn

from grulab import io
from grulab.models import SequenceModel
from grulab.train import FitResult, TrainConfig, fit
from grulab.train.checkpoint import read_checkpoint
from grulab.train.loop import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE

T, B = 12, 8


def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic regression batch per step: the target is the mean of the inputs."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(T, B, 3, generator=g)
    return x, x.mean(dim=(0, 2))


VALID = batches(-1)


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(-1), y)


def evaluate(model: nn.Module) -> dict[str, float]:
    return {"mse": loss_fn(model, VALID).item()}


def make_model(cell: str = "rnn", seed: int = 7, **kw) -> SequenceModel:
    torch.manual_seed(seed)
    if cell == "gru":
        kw.setdefault("backend", "reference")  # these tests are about training, not the fast engine's compile
    return SequenceModel(cell, 3, 10, 1, **kw)


def quiet(**kw) -> TrainConfig:
    return TrainConfig(**{"progress": False, "threads": 1, **kw})


class Crash(Exception):
    pass


def crashing(at: int):
    def fn(step: int):
        if step == at:
            raise Crash
        return batches(step)
    return fn


# --- configuration ----------------------------------------------------------------------------


def test_config_unknown_key_fails_loudly():
    with pytest.raises(ValueError, match="unknown TrainConfig key.*'stpes'"):
        TrainConfig.from_dict({"stpes": 10})


@pytest.mark.parametrize("kw, match", [
    (dict(steps="10"), "steps must be a int"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(lr=-1.0), "lr must be"),
    (dict(optimizer="adagrad"), "optimizer must be one of"),
    (dict(mode="up"), "mode must be one of"),
    (dict(clip=0.0), "clip must be"),
    (dict(progress=1), "progress must be a bool"),
    (dict(weight_noise=float("nan")), "weight_noise must be"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        TrainConfig(**kw)


def test_config_roundtrip_and_int_for_float():
    cfg = TrainConfig.from_dict({"lr": 1, "clip": None, "monitor": "mse", "patience": 2})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.clip is None
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(steps=5).steps == 5
    with pytest.raises(ValueError, match="unknown"):
        cfg.replace(nope=1)


def test_fit_argument_errors(tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match="monitor='mse' needs an evaluate"):
        fit(model, loss_fn, batches, None, quiet(steps=2, monitor="mse"))
    with pytest.raises(ValueError, match="patience .* needs monitor"):
        fit(model, loss_fn, batches, evaluate, quiet(steps=2, patience=3))
    with pytest.raises(ValueError, match="resume=True needs a run_dir"):
        fit(model, loss_fn, batches, None, quiet(steps=2), resume=True)
    with pytest.raises(TypeError, match="batches must be"):
        fit(model, loss_fn, 3, None, quiet(steps=2))
    with pytest.raises(ValueError, match="monitor 'acc' is not among"):
        fit(model, loss_fn, batches, evaluate, quiet(steps=2, monitor="acc"))
    with pytest.raises(TypeError, match="scalar Tensor"):
        fit(model, lambda m, b: m(b[0]), batches, None, quiet(steps=2))


# --- training ---------------------------------------------------------------------------------


def test_fit_learns_and_writes_run_dir(tmp_path):
    model = make_model()
    before = evaluate(model)["mse"]
    result = fit(model, loss_fn, batches, evaluate, quiet(steps=60, lr=1e-2, eval_every=20, log_every=5,
                                                          monitor="mse"), run_dir=tmp_path, description="t")
    assert isinstance(result, FitResult)
    assert result.steps == 60 and not result.stopped_early and result.seconds > 0
    assert [r["step"] for r in result.history] == [20, 40, 60]
    assert [r["step"] for r in result.train_log] == list(range(5, 61, 5))
    assert result.best["mse"] == min(r["mse"] for r in result.history) < before / 2
    assert result.best_step == min(result.history, key=lambda r: r["mse"])["step"]
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["train"]["steps"] == 60 and config["model"]["cell"] == "rnn" and config["description"] == "t"
    lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r for r in lines if r["kind"] == "eval"] == result.history
    # the model file is the best model, loadable with grulab.io; the model holds it too (restore_best)
    loaded, extra = io.load_with_extra(tmp_path / MODEL_FILE)
    assert extra["best_step"] == result.best_step
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert evaluate(model)["mse"] == pytest.approx(result.best["mse"], abs=1e-7)
    state = json.loads(read_checkpoint(tmp_path / CHECKPOINT_FILE)[1]["state"])  # safetensors + JSON, no pickle
    assert state["finished"] and state["step"] == 60


def test_early_stopping_restores_best():
    scores = iter([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.5])
    snapshots = {}

    def fake_eval(model):
        # a scripted validation curve; remember the weights at each evaluation
        snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"score": next(scores)}

    model = make_model()
    result = fit(model, loss_fn, batches, fake_eval, quiet(steps=100, eval_every=2, monitor="score", patience=3))
    assert result.stopped_early and result.steps == 12
    assert result.best_step == 6 and result.best == {"score": 1.0}
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[3][k])


def test_mode_max_and_min_delta():
    scores = iter([0.1, 0.5, 0.50001, 0.4])
    result = fit(make_model(), loss_fn, batches, lambda m: {"acc": next(scores)},
                 quiet(steps=8, eval_every=2, monitor="acc", mode="max", min_delta=1e-3))
    assert result.best_step == 4 and result.best["acc"] == 0.5


def test_weight_noise_gradient_is_taken_at_noisy_weights():
    """One SGD step: w <- w - lr * grad L(w + eps), with eps from the run's noise generator."""
    cfg = quiet(steps=1, optimizer="sgd", lr=0.1, clip=None, weight_noise=0.05, seed=3)
    model = make_model()
    twin = make_model()
    fit(model, loss_fn, batches, None, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 0x5EED)
    params = list(twin.parameters())
    clean = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen) * cfg.weight_noise)
    loss_fn(twin, batches(0)).backward()
    for p, c, q in zip(params, clean, model.parameters(), strict=True):
        expected = c - cfg.lr * p.grad
        assert torch.allclose(q, expected, atol=1e-7), (q - expected).abs().max()
    # without noise the step differs: the noise really reached the gradient
    plain = make_model()
    fit(plain, loss_fn, batches, None, cfg.replace(weight_noise=0.0))
    assert not torch.allclose(plain.head.weight, model.head.weight)


def test_progress_bar_runs():
    result = fit(make_model(), loss_fn, batches, evaluate, TrainConfig(steps=3, eval_every=3, progress=True),
                 description="bar")
    assert result.steps == 3


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_optimizers_step(optimizer):
    model = make_model()
    result = fit(model, loss_fn, batches, evaluate, quiet(steps=5, eval_every=5, optimizer=optimizer,
                                                          momentum=0.5 if optimizer != "adam" else 0.0))
    assert result.steps == 5 and math.isfinite(result.best["mse"])


def test_iterable_batches_and_exhaustion():
    data = [batches(i) for i in range(7)]
    result = fit(make_model(), loss_fn, data, evaluate, quiet(steps=100, eval_every=5))
    assert result.steps == 7 and [r["step"] for r in result.history] == [5, 7]


def test_non_finite_loss_names_the_step():
    def bad(model, batch):
        loss = loss_fn(model, batch)
        return loss * float("nan") if bad.n >= 3 else loss

    bad.n = 0

    def counting(step):
        bad.n = step
        return batches(step)

    with pytest.raises(FloatingPointError, match="step 4"):
        fit(make_model(), bad, counting, None, quiet(steps=10))


# --- checkpoints and resume -------------------------------------------------------------------


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_resume_equals_uninterrupted(tmp_path, cell):
    """Crash mid-run, resume from the last checkpoint: same weights, same metrics, bit for bit.

    Everything that draws random numbers is on: weight noise, dropout between layers, early
    stopping state, Adam moments.
    """
    cfg = quiet(steps=24, lr=1e-2, eval_every=4, log_every=2, monitor="mse", patience=50, checkpoint_every=5,
                weight_noise=0.02, seed=11)
    kw = dict(num_layers=2, dropout=0.25)
    full = make_model(cell, **kw)
    ref = fit(full, loss_fn, batches, evaluate, cfg, run_dir=tmp_path / "full")

    part = make_model(cell, **kw)
    with pytest.raises(Crash):
        fit(part, loss_fn, crashing(17), evaluate, cfg, run_dir=tmp_path / "part")
    state = json.loads(read_checkpoint(tmp_path / "part" / CHECKPOINT_FILE)[1]["state"])
    assert state["step"] == 15 and not state["finished"]
    # metrics.jsonl holds records past the checkpoint (steps 16): resume must drop them
    resumed_model = make_model(cell, seed=123, **kw)  # the checkpoint decides the weights, not this init
    res = fit(resumed_model, loss_fn, batches, evaluate, cfg, run_dir=tmp_path / "part", resume=True)

    for k, v in _state(full).items():
        assert torch.equal(v, resumed_model.state_dict()[k]), k
    assert res.history == ref.history and res.train_log == ref.train_log
    assert res.best == ref.best and res.best_step == ref.best_step
    assert (tmp_path / "full" / METRICS_FILE).read_text() == (tmp_path / "part" / METRICS_FILE).read_text()
    assert (tmp_path / "full" / MODEL_FILE).read_bytes() == (tmp_path / "part" / MODEL_FILE).read_bytes()


def test_resume_of_finished_run_returns_at_once_and_can_extend(tmp_path):
    cfg = quiet(steps=10, eval_every=5, monitor="mse")
    model = make_model()
    first = fit(model, loss_fn, batches, evaluate, cfg, run_dir=tmp_path)
    calls = []
    again = fit(make_model(), loss_fn, lambda s: calls.append(s) or batches(s), evaluate, cfg, run_dir=tmp_path,
                resume=True)
    assert calls == [] and again.history == first.history and again.best == first.best
    longer = fit(make_model(), loss_fn, batches, evaluate, cfg.replace(steps=15), run_dir=tmp_path, resume=True)
    assert longer.steps == 15 and [r["step"] for r in longer.history] == [5, 10, 15]


def test_resume_rejects_changed_config_and_other_models(tmp_path):
    fit(make_model(), loss_fn, batches, None, quiet(steps=4, checkpoint_every=2), run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"config changed \(lr: 0.001 -> 0.1\)"):
        fit(make_model(), loss_fn, batches, None, quiet(steps=4, lr=0.1), run_dir=tmp_path, resume=True)
    torch.manual_seed(0)
    other = SequenceModel("rnn", 3, 11, 1)
    with pytest.raises(ValueError, match="does not match SequenceModel|expects"):
        fit(other, loss_fn, batches, None, quiet(steps=4), run_dir=tmp_path, resume=True)


def test_resume_without_checkpoint_starts_afresh(tmp_path):
    a = make_model()
    fit(a, loss_fn, batches, None, quiet(steps=6), run_dir=tmp_path / "x", resume=True)
    b = make_model()
    fit(b, loss_fn, batches, None, quiet(steps=6))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    fit(make_model(), loss_fn, batches, None, quiet(steps=3), run_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        fit(make_model(), loss_fn, batches, None, quiet(steps=3), run_dir=tmp_path, resume=True)


def test_threads_apply_during_fit_and_are_restored():
    import numba

    seen = []

    def loss_with_probe(model, batch):
        seen.append((torch.get_num_threads(), numba.get_num_threads()))
        return loss_fn(model, batch)

    before = torch.get_num_threads(), numba.get_num_threads()
    fit(make_model(), loss_with_probe, batches, None, quiet(steps=2, threads=1))
    assert seen == [(1, 1), (1, 1)]
    assert (torch.get_num_threads(), numba.get_num_threads()) == before
    seen.clear()
    fit(make_model(), loss_with_probe, batches, None, quiet(steps=1, threads=None))
    assert seen == [before]
