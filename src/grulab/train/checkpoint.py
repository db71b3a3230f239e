"""Training checkpoints in the safe format: safetensors for tensors, JSON for everything else.

A checkpoint is one file (written atomically by :func:`grulab.io.atomic_write_bytes`) holding
everything that decides what training does next, so that resuming reaches exactly the result of
an uninterrupted run:

- tensors ``model.<name>`` (current weights), ``best.<name>`` (best weights so far, if any),
  ``optim.<index>.<key>`` (optimiser state), ``rng.torch``, ``rng.cuda.<i>``, ``rng.numpy``,
  ``rng.noise`` (the weight-noise generator);
- a JSON header (``grulab.io`` format, ``"kind": "checkpoint"``) with the step, the training
  config, the optimiser's hyper-parameters, the Python ``random`` state, the rest of NumPy's
  state, the early-stopping state and the metric records written so far.

No pickle: loading a checkpoint parses JSON and copies tensors whose names and shapes must match.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from grulab.io import FORMAT, VERSION, atomic_write_bytes, decode, encode, load_state_strict

KIND = "checkpoint"


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-serialisable remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict[str, Any], source: str) -> None:
    """Inverse of :func:`optimizer_state` for an optimiser built over the same parameters."""
    own = optimizer.state_dict()["param_groups"]
    groups = meta["param_groups"]
    if len(groups) != len(own) or any(len(g["params"]) != len(o["params"]) for g, o in zip(groups, own, strict=True)):
        raise ValueError(f"{source}: the optimiser state does not match this model's parameters")
    # JSON turns tuples (Adam's betas) into lists: give them back their type
    groups = [{k: (tuple(v) if isinstance(o.get(k), tuple) else v) for k, v in g.items()}
              for g, o in zip(groups, own, strict=True)]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(noise: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state of every random number generator training may draw from."""
    tensors = {"rng.torch": torch.get_rng_state(), "rng.noise": noise.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, list(py_state), gauss]}
    return tensors, meta


def set_rng_state(noise: torch.Generator, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    noise.set_state(tensors["rng.noise"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    noise: torch.Generator, best: dict[str, torch.Tensor] | None, state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically. ``state`` is the JSON part (step, config, records...)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    optim_tensors, optim_meta = optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state(noise)
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    # the state is kept as a JSON string: grulab.io sorts header keys, the records keep their order
    header = {"format": FORMAT, "version": VERSION, "kind": KIND, "state": json.dumps(state),
              "optimizer": optim_meta, "rng": rng_meta}
    return atomic_write_bytes(path, encode(tensors, header))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and header of a checkpoint file; ``ValueError`` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    tensors, header = decode(path.read_bytes(), str(path))
    if header.get("kind") != KIND:
        raise ValueError(f"{path} is a grulab file but not a training checkpoint")
    return tensors, header


def restore_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                       noise: torch.Generator) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Load a checkpoint into ``model``, ``optimizer`` and the RNGs; returns (best weights, state)."""
    tensors, header = read_checkpoint(path)
    source = str(path)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "best": {}, "optim": {}, "rng": {}}
    for name, value in tensors.items():
        prefix, _, rest = name.partition(".")
        if prefix not in groups:
            raise ValueError(f"{source}: unexpected tensor {name!r}")
        groups[prefix][name if prefix in ("optim", "rng") else rest] = value
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    load_state_strict(model, groups["model"], source)
    best = None
    if groups["best"]:
        own = model.state_dict()
        if set(groups["best"]) != set(own):
            raise ValueError(f"{source}: the best weights do not match the model")
        best = {k: v.to(device) for k, v in groups["best"].items()}
    # the optimiser moves its state to its parameters' device and dtype itself
    load_optimizer_state(optimizer, groups["optim"], header["optimizer"], source)
    set_rng_state(noise, groups["rng"], header["rng"])
    return best, json.loads(header["state"])
