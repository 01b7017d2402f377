"""One attention call in the ops' canonical form (csrc/ops.cpp), run on the route chosen for it: mfa_torch's ops
(Metal, emulator or reference kernels) or one of PyTorch's paths (pytorch_paths.py)."""
import torch

from . import ops  # noqa: F401  (registers the ops' kernels and autograd)
from . import pytorch_paths, reference


def log_sum_exp(stats):
    """lse = max + log(sum) from the op's softmax stats (..., 2); -inf for rows that attend nothing."""
    row_max, row_sum = stats.unbind(-1)
    return torch.where(row_sum > 0, row_max + torch.log(row_sum), torch.full_like(row_max, float("-inf")))


class AttentionCall:
    """Canonical arguments of mfa::attention_forward: q (B, Hq, L, E), k (B, Hk, S, E), v (B, Hk, S, Ev) (views of
    the caller's tensors; with `pages`, a paged_kv.PagedKV, k and v are page pools), the optional mask (or a
    FlexAttention block mask in compact form, `blocks`), ALiBi slopes, varlen offsets and sinks, and the options.
    `lse_wanted`: the caller returns the log-sum-exp (a route that cannot give it cannot take the call)."""

    def __init__(self, q, k, v, *, mask=None, alibi=None, cu_q=None, cu_k=None, max_q=None, max_k=None, scale,
                 window=(-1, -1), bottom_right=False, softcap=0.0, dropout_p=0.0, sinks=None, blocks=None,
                 pages=None, num_splits=0, lse_wanted=False):
        self.q, self.k, self.v, self.mask, self.alibi, self.cu_q, self.cu_k = q, k, v, mask, alibi, cu_q, cu_k
        self.blocks, self.pages, self.num_splits = blocks, pages, num_splits
        self.max_q = q.shape[2] if max_q is None else max_q
        self.max_k = k.shape[2] if max_k is None else max_k
        self.scale, (self.left, self.right), self.bottom_right = scale, window, bottom_right
        self.softcap, self.dropout_p, self.sinks, self.lse_wanted = softcap, dropout_p, sinks, lse_wanted
        self.stats = self.seed = None  # of an ops run: the softmax stats and the dropout seed

    @property
    def needs_grad(self):
        """Whether autograd will differentiate this call (a route without a backward cannot take it)."""
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (self.q, self.k, self.v,
                                                                                            self.mask, self.sinks))

    def op_args(self):
        return (self.q, self.k, self.v, self.mask, self.alibi, self.cu_q, self.cu_k, self.max_q, self.max_k,
                self.scale, self.left, self.right, self.bottom_right, self.softcap, self.dropout_p)

    def run(self, route):
        """(out, lse or None) on `route` (a routing.Route name)."""
        if route in pytorch_paths.ROUTES:
            return pytorch_paths.run(route, self)
        # The keep mask is keyed by (seed, offset) with the seed drawn from torch's default generator, so
        # torch.manual_seed reproduces it; a tensor keeps the draw traceable by torch.compile.
        self.seed = torch.stack([torch.randint(0, 2**62, (), dtype=torch.int64),
                                 torch.zeros((), dtype=torch.int64)]) if self.dropout_p > 0 else None
        blocks = (None, None, []) if self.blocks is None else self.blocks.op_args()
        pages = (None, None) if self.pages is None else self.pages.op_args()
        out, self.stats = torch.ops.mfa.attention_forward(*self.op_args(), self.seed, self.sinks, *blocks, *pages,
                                                          self.num_splits)
        return out, log_sum_exp(self.stats)

    def dropped_probabilities(self):
        """FlashAttention's S_dmask of this call's ops run: its probabilities, the dropped ones negated."""
        with torch.no_grad():
            return reference.attention_probabilities(*self.op_args(), self.seed, self.stats).to(self.q.dtype)
