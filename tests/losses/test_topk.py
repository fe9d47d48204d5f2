"""Top-k logits (FKD's compression): the expanded logits give exactly the marginally smoothed target.

Independent formula: the teacher's softmax at T on its k largest classes, the rest of the mass
shared evenly (computed from probabilities in float64, not from logits); and the KD loss from the
expanded logits equals T² · KL(that target ‖ student softmax), written out by hand.
"""

import math

import pytest
import torch

from kdlab.errors import ConfigError
from kdlab.losses.kd import kd_loss
from kdlab.losses.topk import check_top_k, compress_logits, expand_logits, smoothed_target


def _round_trip(z, k, T):
    return torch.softmax(expand_logits(*compress_logits(z, k, T), z.shape[-1]).double() / T, dim=-1)


@pytest.mark.parametrize("k,T", [(1, 1.0), (3, 4.0), (9, 20.0), (5, 0.05)])
def test_expanded_logits_give_the_smoothed_target(k, T):
    z = torch.randn(7, 10, generator=torch.Generator().manual_seed(k)) * 3
    assert torch.allclose(_round_trip(z, k, T), smoothed_target(z, k, T), atol=1e-6)


def test_hand_checked_values():
    """Logits (ln 4, ln 2, 0, 0) at T = 1: softmax (4, 2, 1, 1)/8; top-1 keeps 1/2, the other three
    classes share 1/2 evenly: 1/6 each, i.e. a rest logit of ln(mean(2, 1, 1)) = ln(4/3)."""
    z = torch.tensor([[math.log(4), math.log(2), 0.0, 0.0]])
    values, index, rest = compress_logits(z, 1, 1.0)
    assert index.tolist() == [[0]] and index.dtype == torch.int32
    assert values.item() == pytest.approx(math.log(4))
    assert rest.item() == pytest.approx(math.log(4 / 3))
    assert _round_trip(z, 1, 1.0)[0].tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])


def test_a_flat_tail_is_kept_exactly():
    z = torch.tensor([[5.0, 2.0, -1.0, -1.0, -1.0]])
    full = torch.softmax(z.double() / 2.0, dim=-1)
    assert torch.allclose(_round_trip(z, 2, 2.0), full, atol=1e-7)


def test_the_kd_loss_it_implies():
    g = torch.Generator().manual_seed(3)
    t, s = torch.randn(6, 12, generator=g) * 2, torch.randn(6, 12, generator=g)
    T, k = 4.0, 3
    got = kd_loss(s, expand_logits(*compress_logits(t, k, T), 12), T)
    p = smoothed_target(t, k, T)
    log_q = torch.log_softmax(s.double() / T, dim=-1)
    want = T * T * (p * (p.log() - log_q)).sum(-1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    full = kd_loss(s, t, T)
    assert got.item() != pytest.approx(full.item(), rel=1e-4)  # the tail's shape is lost, as stated


def test_edge_inputs_stay_finite_and_exact():
    huge = torch.tensor([[1e4, -1e4, 3e3, 0.0, 1e4 - 1]])
    assert torch.allclose(_round_trip(huge, 2, 1.0), smoothed_target(huge, 2, 1.0), atol=1e-6)
    ties = torch.ones(1, 6)  # duplicate logits: any k of them, every class keeps 1/6
    assert torch.allclose(_round_trip(ties, 2, 3.0), torch.full((1, 6), 1 / 6, dtype=torch.float64), atol=1e-7)
    one = torch.randn(1, 4)  # a batch of one, k = C - 1 (the rest is the last class itself)
    assert torch.allclose(_round_trip(one, 3, 2.0), torch.softmax(one.double() / 2.0, -1), atol=1e-6)
    tiny_t = torch.tensor([[3.0, 2.9, -50.0, -60.0]])
    assert torch.isfinite(expand_logits(*compress_logits(tiny_t, 1, 0.01), 4)).all()


def test_a_k_that_keeps_nothing_or_everything_is_refused():
    for k in (0, 10, 11, True):
        with pytest.raises(ConfigError, match="top_k"):
            check_top_k(k, 10)
