"""grulab: Gated Recurrent Units, exact, fast and open to inspection."""

from grulab.engine.dispatch import gru_sequence
from grulab.engine.reference import gru_ref
from grulab.layers import GRU, LSTM, RNN, GRUCell, step_jacobian

__all__ = ["GRU", "GRUCell", "LSTM", "RNN", "gru_ref", "gru_sequence", "step_jacobian"]
__version__ = "0.1.0"
