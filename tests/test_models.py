"""SequenceModel and matched parameter budgets."""

import pytest
import torch

from grulab import io
from grulab.models import SequenceModel, count_parameters, hidden_for_budget


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru_before", "lstm"])
@pytest.mark.parametrize("readout", ["last", "all"])
def test_shapes_and_round_trip(tmp_path, cell, readout):
    m = SequenceModel(cell, 3, 8, 2, num_layers=2, readout=readout, bidirectional=True)
    x = torch.randn(7, 4, 3)
    y = m(x, lengths=torch.tensor([7, 2, 5, 1]))
    assert y.shape == ((7, 4, 2) if readout == "all" else (4, 2))
    back = io.load(io.save(m, tmp_path / "m.safetensors"))
    assert torch.equal(back(x), m(x))


def test_last_readout_is_the_final_state_at_each_length():
    torch.manual_seed(0)
    m = SequenceModel("gru", 3, 5, 1).double()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    y = m(x, lengths=torch.tensor([6, 3]))
    assert torch.allclose(y[1], m(x[:3, 1:2])[0], atol=1e-14)


def test_matched_budget_like_chung():
    # Chung et al. 2014 matched ~20k parameters (88 keys in and out); we match counts, readout included
    sizes = {}
    for cell in ("rnn", "gru", "lstm"):
        H = sizes[cell] = hidden_for_budget(cell, 88, 88, 20_000)
        n = count_parameters(SequenceModel(cell, 88, H, 88))
        print(cell, H, n)
        assert abs(n - 20_000) <= 0.03 * 20_000
        for other in (H - 1, H + 1):  # no neighbouring size is closer
            assert abs(count_parameters(SequenceModel(cell, 88, other, 88)) - 20_000) >= abs(n - 20_000)
    assert sizes["rnn"] > sizes["gru"] > sizes["lstm"]


def test_bad_config():
    with pytest.raises(ValueError, match="cell must be one of"):
        SequenceModel("transformer", 1, 2, 3)
    with pytest.raises(ValueError, match="readout must be one of"):
        SequenceModel("gru", 1, 2, 3, readout="mean")
