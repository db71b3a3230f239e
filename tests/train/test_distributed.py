"""Two processes under torchrun (gloo, CPU) train the same model as one process with the same
global batch: both ranks end with identical weights, and the losses match the single run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from grulab import io
from grulab.cli import main
from grulab.train.distributed import DistInfo, shard

ARGS = ["train", "--data", "digits-row", "--cell", "gru", "--backend", "reference", "--hidden", "8",
        "--batch-size", "10", "--steps", "8", "--eval-every", "4", "--log-every", "1", "--lr", "0.01",
        "--weight-noise", "0.01", "--no-progress", "--seed", "5", "--threads", "1"]


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "grulab", *ARGS, "--out", str(two)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((two / "results.json").read_text())
    print(results["ddp"])
    assert results["ddp"]["world_size"] == 2 and results["ddp"]["identical"]
    assert json.loads((two / "config.json").read_text())["world_size"] == 2

    one = tmp_path / "one"
    assert main([*ARGS, "--out", str(one)]) == 0
    loss_two, loss_one = records(two, "train"), records(one, "train")
    assert [r["step"] for r in loss_two] == [r["step"] for r in loss_one] == list(range(1, 9))
    for a, b in zip(loss_two, loss_one, strict=True):
        print(a["step"], a["loss"], b["loss"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4, abs=1e-6)
    w_two, w_one = io.load(two / "model.safetensors"), io.load(one / "model.safetensors")
    for (k, a), (_, b) in zip(w_two.state_dict().items(), w_one.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), (k, (a - b).abs().max())
    assert records(two, "eval")[-1]["valid_nll"] == pytest.approx(records(one, "eval")[-1]["valid_nll"], rel=1e-5)


def test_shard_splits_a_batch_exactly():
    for n in (1, 7, 10):
        for world in (1, 2, 3):
            parts = [range(n)[shard(n, DistInfo(r, world, r))] for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
