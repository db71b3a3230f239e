"""The laboratory: experiments that put the seed's claims to the test (``grulab lab``).

Each experiment is one file (``exp_*.py``) tied to a claim of ``docs/claims.md``; this module
keeps the registry. The library (``grulab`` outside ``lab/``) never imports the lab.

    grulab lab list
    grulab lab run NAME|all [--quick] [--seeds N] [--out DIR] [--set key=value ...] [--jobs N]
    grulab lab report DIR
"""

from __future__ import annotations

from grulab.lab.core import Experiment
from grulab.lab.exp_adding import AddingExperiment
from grulab.lab.exp_copy import CopyExperiment
from grulab.lab.exp_counting import CountingExperiment
from grulab.lab.exp_entangled import EntangledExperiment
from grulab.lab.exp_identity import IdentityExperiment
from grulab.lab.exp_rare_event import RareEventExperiment
from grulab.lab.exp_real_data import RealDataExperiment
from grulab.lab.exp_saturation import SaturationExperiment
from grulab.lab.exp_timescales import TimescalesExperiment

# in the order of docs/claims.md
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    CopyExperiment(), AddingExperiment(), RareEventExperiment(), IdentityExperiment(), EntangledExperiment(),
    SaturationExperiment(), CountingExperiment(), TimescalesExperiment(), RealDataExperiment(),
)}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} (or 'all')")
    return EXPERIMENTS[name]


__all__ = ["EXPERIMENTS", "Experiment", "get_experiment"]
