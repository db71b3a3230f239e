"""Model files that are safe to load: safetensors weights with a JSON config, no pickle.

One file holds both: the tensors in safetensors format and, in its string metadata, a JSON
document ``{"format": "grulab", "version": 1, "class": NAME, "config": {...}, "extra": {...}}``.
Loading a file from a stranger therefore never runs code: it parses JSON, looks ``NAME`` up in a
registry of known classes, calls the constructor with the config, and copies tensors whose names
and shapes must match exactly.

Writes are atomic: the file is written beside its target under a temporary name, flushed to
disk, then renamed over the target, so a crash never leaves a half-written file behind a good name.

A class takes part by being registered (:func:`register`) and by having ``config() -> dict``
returning JSON-serialisable constructor keyword arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

FORMAT, VERSION = "grulab", 1
_REGISTRY: dict[str, type[nn.Module]] = {}
M = TypeVar("M", bound=type[nn.Module])


def register(cls: M) -> M:
    """Class decorator: allow ``cls`` in model files (it must define ``config()``)."""
    if not callable(getattr(cls, "config", None)):
        raise TypeError(f"{cls.__name__} must define config() -> dict to be saved")
    _REGISTRY[cls.__name__] = cls
    return cls


def registered() -> dict[str, type[nn.Module]]:
    _ensure_builtin()
    return dict(_REGISTRY)


def _ensure_builtin() -> None:
    # importing registers the classes: GRU, GRUCell, RNN, LSTM; SequenceModel; MinGRU and the variants
    from grulab import layers, models, variants  # noqa: F401
    from grulab.variants import mingru, regularized  # noqa: F401


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order.

    Stored in the header, it turns silent corruption of the weights (a flipped bit, a file
    spliced from two saves) into a load error: safetensors itself only checks the layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> bytes:
    """safetensors bytes with ``header`` as JSON in the metadata (tensors made contiguous, CPU),
    plus the tensors' SHA-256 (:func:`tensors_digest`) that :func:`decode` verifies."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {**header, "sha256": tensors_digest(flat)}
    return st_save(flat, metadata={"grulab": json.dumps(header, sort_keys=True)})


def decode(data: bytes, source: str = "data") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of :func:`encode`; raises ``ValueError`` naming ``source`` on any corruption."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError, AttributeError) as e:
        raise ValueError(f"{source} is not a valid safetensors file (truncated or corrupted?): {e}") from e
    if "grulab" not in meta:
        raise ValueError(f"{source} is a safetensors file but not a grulab file (no 'grulab' metadata)")
    try:
        header = json.loads(meta["grulab"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} has a corrupted grulab header: {e}") from e
    if not isinstance(header, dict):
        raise ValueError(f"{source} has a corrupted grulab header: a JSON object was expected")
    if header.get("format") != FORMAT or not isinstance(header.get("version"), int):
        raise ValueError(f"{source} has an unknown header format {header.get('format')!r}")
    if header["version"] > VERSION:
        raise ValueError(f"{source} was written by a newer grulab (file version {header['version']}, "
                         f"this grulab reads up to {VERSION})")
    expected = header.pop("sha256", None)  # absent in files written before checksums
    if expected is not None and expected != tensors_digest(tensors):
        raise ValueError(f"{source} is corrupted: its tensors do not match the checksum in its header")
    for key, kind in (("config", dict), ("extra", dict), ("class", str)):
        if key in header and not isinstance(header[key], kind):
            raise ValueError(f"{source} has a corrupted grulab header: {key!r} must be a {kind.__name__}")
    return tensors, header


def save(model: nn.Module, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (a registered class) to one ``.safetensors`` file, atomically.

    ``extra`` is any JSON-serialisable metadata stored beside the config (e.g. training metrics).
    """
    _ensure_builtin()
    name = type(model).__name__
    if _REGISTRY.get(name) is not type(model):
        raise TypeError(f"{name} is not a registered grulab model class; decorate it with grulab.io.register")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    header = {"format": FORMAT, "version": VERSION, "class": name, "config": model.config(), "extra": extra or {},
              "dtype": str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else None}
    try:
        json.dumps(header)
    except TypeError as e:
        raise TypeError(f"config() and extra must be JSON-serialisable: {e}") from e
    return atomic_write_bytes(path, encode(model.state_dict(), header))


def load(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", expect: type[nn.Module] | None = None
) -> nn.Module:
    """Load a model saved by :func:`save`. Never unpickles.

    Raises ``FileNotFoundError`` if absent, ``ValueError`` if corrupted, of an unknown class, or
    its tensors do not match the class built from its config (names and shapes), and
    ``TypeError`` if ``expect`` is given and the file holds another class.
    """
    model, _ = load_with_extra(path, map_location=map_location, expect=expect)
    return model


def load_with_extra(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", expect: type[nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """As :func:`load`, also returning the ``extra`` metadata dictionary."""
    _ensure_builtin()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    tensors, header = decode(path.read_bytes(), str(path))
    cls = _REGISTRY.get(header.get("class", ""))
    if cls is None:
        raise ValueError(f"{path} holds an unknown model class {header.get('class')!r}; known: {sorted(_REGISTRY)}")
    if expect is not None and cls is not expect:
        raise TypeError(f"{path} holds a {cls.__name__}, expected a {expect.__name__}")
    try:
        model = cls(**header.get("config", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} has a config that {cls.__name__} rejects: {e}") from e
    if header.get("dtype"):
        dtype = getattr(torch, header["dtype"], None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"{path} names an unknown dtype {header['dtype']!r}")
        model = model.to(dtype)
    load_state_strict(model, tensors, str(path))
    return model.to(map_location), header.get("extra", {})


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model``: same names, shapes and dtypes, or a ``ValueError``."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source} does not match {type(model).__name__}: missing {missing}, unexpected {unexpected}")
    for k, v in sorted(tensors.items()):
        if v.shape != own[k].shape or v.dtype != own[k].dtype:
            raise ValueError(f"{source}: tensor {k!r} is {v.dtype}{tuple(v.shape)}, "
                             f"the model expects {own[k].dtype}{tuple(own[k].shape)}")
    model.load_state_dict(tensors, strict=True)
