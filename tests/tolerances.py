"""One tolerance table per dtype: maximum absolute difference allowed between two computations
of the same quantity (outputs of the GRU lie in [-1, 1]; gradients are compared relative to
their largest entry)."""

import torch

# against torch.nn.* after exact weight conversion (issue contract: 1e-6 / 1e-12)
TORCH_MATCH = {torch.float32: 1e-6, torch.float64: 1e-12}
# hand BPTT against autograd of the reference (same ops, different order)
GRAD_MATCH = {torch.float32: 1e-5, torch.float64: 1e-10}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item() if a.numel() else 0.0


def assert_close(name: str, a: torch.Tensor, b: torch.Tensor, atol: float, relative: bool = False) -> None:
    """Print the max difference, then assert it (relative to max |b| when ``relative``)."""
    assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = max_diff(a, b)
    scale = max(1.0, b.detach().abs().max().item()) if relative and b.numel() else 1.0
    print(f"{name}: max |diff| = {diff:.3e} (scale {scale:.3g}, tol {atol:.1e})")
    assert diff <= atol * scale, f"{name}: max |diff| {diff:.3e} > {atol:.1e} * {scale:.3g}"
