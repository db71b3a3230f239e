"""The quick demonstration behind ``make demo``: GRU against the tanh RNN on the adding problem."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from grulab.layers import GRU, RNN
from grulab.tasks.synthetic import ADDING_BASELINE_MSE, adding_problem


@dataclass
class DemoConfig:
    T: int = 100
    hidden: int = 64
    batch: int = 64
    steps: int = 1200
    lr: float = 3e-3
    clip: float = 1.0
    eval_every: int = 100
    seed: int = 0


class Regressor(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(x)
        return self.head(h_n[-1]).squeeze(-1)


def run_demo(cfg: DemoConfig | None = None, console: Console | None = None) -> dict[str, list[float]]:
    """Train a GRU and a tanh RNN with the same budget; print their test MSE side by side."""
    cfg = cfg or DemoConfig()
    console = console or Console()
    torch.manual_seed(cfg.seed)
    models = {
        "GRU": Regressor(GRU(2, cfg.hidden), cfg.hidden),
        "tanh RNN": Regressor(RNN(2, cfg.hidden), cfg.hidden),
    }
    test_x, test_y = adding_problem(1000, cfg.T, generator=torch.Generator().manual_seed(10_000 + cfg.seed))
    curves: dict[str, list[float]] = {name: [] for name in models}
    seconds: dict[str, float] = {}
    with Progress(console=console, transient=True) as progress:
        for name, model in models.items():
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            gen = torch.Generator().manual_seed(cfg.seed)
            task = progress.add_task(f"training {name}", total=cfg.steps)
            start = time.perf_counter()
            for step in range(1, cfg.steps + 1):
                x, y = adding_problem(cfg.batch, cfg.T, generator=gen)
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                if step % cfg.eval_every == 0:
                    with torch.no_grad():
                        curves[name].append(nn.functional.mse_loss(model(test_x), test_y).item())
                progress.update(task, advance=1, description=f"training {name}  loss {loss.item():.4f}")
            seconds[name] = time.perf_counter() - start
    table = Table(title=f"Adding problem, T={cfg.T}: test MSE (baseline {ADDING_BASELINE_MSE:.3f})")
    table.add_column("step", justify="right")
    for name in models:
        table.add_column(name, justify="right")
    for i in range(len(curves["GRU"])):
        table.add_row(str((i + 1) * cfg.eval_every), *(f"{curves[n][i]:.4f}" for n in models))
    console.print(table)
    console.print("training time: " + ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()))
    return curves
