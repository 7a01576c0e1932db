"""mor.nn.functional: the fast softmax paths equal torch's softmax and log_softmax, values and gradients; the
guard epsilon is the literal floor except where that rounds to 0."""

import pytest
import torch

from mor.nn.functional import SHORT, eps, log_softmax, softmax


@pytest.mark.parametrize("shape", [(7, 2), (3, 5, 2), (4, 3, 6, 9), (5, SHORT), (2, 40), (6,)])
@pytest.mark.parametrize("fast, reference", [(softmax, torch.softmax), (log_softmax, torch.log_softmax)])
def test_fast_softmax_equals_torchs_with_its_gradient(shape, fast, reference):
    x = (torch.randn(shape) * 4).requires_grad_()
    upstream = torch.randn(shape)
    got = fast(x)
    (grad,) = torch.autograd.grad(got, x, upstream)
    want = reference(x, -1)
    (want_grad,) = torch.autograd.grad(want, x, upstream)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_masked_scores_keep_their_zeros():
    scores = torch.tensor([[0.3, float("-inf"), 1.2], [float("-inf"), 2.0, float("-inf")]])
    probs = softmax(scores)
    assert probs[0, 1] == 0 and probs[1].tolist() == [0.0, 1.0, 0.0]


def test_the_guard_epsilon_is_the_literal_floor_unless_it_rounds_to_zero_in_float16():
    assert eps(torch.float32) == eps(torch.bfloat16) == eps(torch.float64) == 1e-9
    assert eps(torch.float32, 1e-12) == 1e-12
    assert torch.tensor([1e-9], dtype=torch.bfloat16).item() > 0
    assert torch.zeros(1, dtype=torch.float16).clamp_min(eps(torch.float16)).item() == torch.finfo(torch.float16).tiny


def test_normalized_weights_of_an_all_zero_row_stay_zero_with_a_finite_gradient():
    """A row whose every slot was dropped: zeros out, and no inf in the gradient (which became NaN downstream)."""
    from mor.nn.functional import normalized

    w = torch.tensor([[0.0, 0.0], [3e-12, 1e-12]], requires_grad=True)
    out = normalized(w)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [0.75, 0.25]]))
    out[:, 0].sum().backward()
    assert torch.isfinite(w.grad).all()
