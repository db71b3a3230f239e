"""grulab: Gated Recurrent Units, exact, fast and open to inspection."""

from grulab.engine.dispatch import gru_sequence
from grulab.engine.reference import gru_ref
from grulab.export import export_onnx
from grulab.layers import GRU, LSTM, RNN, GRUCell, step_jacobian
from grulab.variants.mingru import MinGRU
from grulab.variants.regularized import LayerNormGRU, RegularizedGRU

__all__ = ["GRU", "GRUCell", "LSTM", "LayerNormGRU", "MinGRU", "RNN", "RegularizedGRU", "export_onnx", "gru_ref",
           "gru_sequence", "step_jacobian"]
__version__ = "0.1.0"
