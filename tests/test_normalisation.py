"""Property tests of the argument normalisation (layouts, broadcasting, causal alignment): the ops' canonical
form must give what PyTorch's own SDPA gives for the user's original arguments, in fp64."""
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import mfa_torch

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)  # the same examples on every run and host


@st.composite
def sdpa_problems(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    Hk = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 3]))
    Hq = Hk * group
    L, S = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    E, Ev = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    broadcast = lambda shape: tuple(d if draw(st.booleans()) else 1 for d in shape)  # noqa: E731
    # key/value may broadcast over the query's batch dims (torch allows it) and may drop leading dims.
    kv_batch = broadcast(batch)[draw(st.integers(0, len(batch))):]
    q = torch.randn(*batch, Hq, L, E, dtype=torch.float64)
    k = torch.randn(*kv_batch, Hk, S, E, dtype=torch.float64)
    v = torch.randn(*kv_batch, Hk, S, Ev, dtype=torch.float64)
    mask, causal = None, draw(st.booleans())
    if not causal and draw(st.booleans()):
        full = batch + (Hq, L, S)
        # at least (L, S): PyTorch's SDPA, the yardstick here, fails on a 1-D mask (IndexError on dim -2)
        shape = broadcast(full)[draw(st.integers(0, len(full) - 2)):]
        mask = torch.rand(shape) > 0.3 if draw(st.booleans()) else torch.randn(shape, dtype=torch.float64)
    return q, k, v, mask, causal, group > 1


@SETTINGS
@given(sdpa_problems())
def test_canonical_form_matches_torch_for_any_layout(problem):
    q, k, v, mask, causal, gqa = problem
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    # return_lse forces the reference route: the call goes through the normalisation to the ops.
    out, lse = mfa_torch.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa,
                                                      return_lse=True)
    assert out.shape == expected.shape and lse.shape == expected.shape[:-1]
    torch.testing.assert_close(out, expected.nan_to_num(0.0))  # torch may give NaN on rows attending nothing


@SETTINGS
@given(st.integers(0, 9), st.integers(0, 9), st.integers(-1, 4), st.integers(-1, 4), st.booleans())
def test_flash_alignment_is_bottom_right_and_sdpa_alignment_upper_left(L, S, left, right, causal):
    torch.manual_seed(L * 10 + S)
    q, k, v = (torch.randn(1, n, 2, 4, dtype=torch.float64) for n in (L, S, S))
    i = torch.arange(L).view(-1, 1)
    j = torch.arange(S).view(1, -1)
    right = 0 if causal else right

    def allowed(diagonal):
        ok = torch.ones(L, S, dtype=torch.bool)
        if left >= 0:
            ok &= j >= i + diagonal - left
        if right >= 0:
            ok &= j <= i + diagonal + right
        return ok

    flash = mfa_torch.flash_attn_func(q, k, v, causal=causal, window_size=(left, right))
    expected = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=allowed(S - L))
    torch.testing.assert_close(flash, expected.transpose(1, 2).nan_to_num(0.0))
    sdpa = mfa_torch.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal,
                                                  window_size=(left, right))
    expected = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=allowed(0))
    torch.testing.assert_close(sdpa, expected.nan_to_num(0.0))


@SETTINGS
@given(st.lists(st.integers(1, 3), min_size=0, max_size=2), st.lists(st.integers(1, 3), min_size=0, max_size=2),
       st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.booleans())
def test_matmul_layouts_match_torch(batch_a, batch_b, M, K, N, vector_a, vector_b):
    a = torch.randn(K, dtype=torch.float64) if vector_a else torch.randn(*batch_a, M, K, dtype=torch.float64)
    b = torch.randn(K, dtype=torch.float64) if vector_b else torch.randn(*batch_b, K, N, dtype=torch.float64)
    try:
        expected = torch.matmul(a, b)
    except RuntimeError:
        try:
            mfa_torch.matmul(a, b)
        except ValueError:
            return
        raise AssertionError("mfa_torch.matmul accepted shapes torch.matmul rejects")
    torch.testing.assert_close(mfa_torch.matmul(a, b), expected)
