"""How far a change of the logits moves next-token distributions (paper §4's metrics).

The pruning sweep compares every pruned head with the original at every position: mean
KL(p‖q) and JS divergence, top-1 agreement, the next token's log-probability, and the
sum of q over positions (for α'). It does so for dozens of heads, so these
vocabulary-wide passes, not the model, are the sweep's cost. They are computed from the
logit change Δ = z' − z, which the sweep has directly (−h_D E_Dᵀ), in blocks of 16
positions that stay in the processor's cache, with two transcendental passes per block:

    x = Δ − Σ pΔ (softmax ignores a shift shared by every token, so Σ p x = 0),
    S = Σ p·expm1(x) ≥ 0,   KL(p‖q) = log Σ p e^x − Σ p x = log1p(S),
    q = p(1 + expm1(x))/(1 + S),   u = q/p − 1 = (expm1(x) − S)/(1 + S),
    JS = ½[Σ q·log(q/p) − Σ (p + q)·log1p(u/2)],  log(q/p) = x − log1p(S).

Centring keeps 1 + S ≥ 1 (no cancellation when most logits fall), and S is summed as
W = Σ p(expm1(x) − x) ≥ 0 term by term plus the rounding residue of Σ p x, so a small
divergence is not the difference of two large numbers: its error is relative to Δ, not
to the logits (log-softmax differences carry the float32 rounding of logits of size
~10). Δ = 0 gives exactly 0. A block where some x would overflow expm1 (a logit raised
by more than ~88 against the rest) is computed from log-softmax instead.

    reference = Reference.of(original_logits, targets)
    accumulate(totals, reference, pruned_logits - original_logits)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_ROWS = 16
"""Positions per block. Four float32 scratch buffers of 16 rows of a 50k vocabulary
(3 MB each) keep a block's passes mostly in cache; measured on a 2-core machine, 16 to
32 rows was fastest: smaller blocks pay per-call overhead, larger ones main memory."""


@dataclass(frozen=True)
class Reference:
    """One chunk of positions' original next-token distributions (rows: positions)."""

    logits: torch.Tensor
    """z: (positions, vocab) float32."""
    p: torch.Tensor
    """softmax(z): (positions, vocab) float32."""
    top: torch.Tensor
    """The original top-1 token of every position."""
    targets: torch.Tensor
    """The next token of every position, −1 where there is none."""
    log_p_next: torch.Tensor
    """log p of the next token (0 where there is none)."""

    @classmethod
    def of(cls, logits: torch.Tensor, targets: torch.Tensor) -> Reference:
        log_p = torch.log_softmax(logits, dim=-1)
        return cls(logits, log_p.exp(), logits.argmax(-1), targets,
                   _at(log_p, targets.clamp_min(0)) * (targets >= 0))

    def alpha_sum(self) -> torch.Tensor:
        """Σ p over the chunk's positions, float64, summed block by block as `accumulate`
        sums q: an unchanged head gives exactly the same α'."""
        column_sum = torch.zeros(self.p.shape[1])
        for start in range(0, len(self.p), BLOCK_ROWS):
            column_sum += self.p[start:start + BLOCK_ROWS].sum(0)
        return column_sum.double()

    def rows(self, start: int, stop: int) -> Reference:
        return Reference(self.logits[start:stop], self.p[start:stop], self.top[start:stop],
                         self.targets[start:stop], self.log_p_next[start:stop])


@dataclass
class Totals:
    """Running sums of one changed head's comparison with the original, over positions."""

    kl: float = 0.0
    js: float = 0.0
    top1: float = 0.0
    nll: float = 0.0
    alpha: torch.Tensor | None = None
    """Σ q over positions, float64."""


def accumulate(total: Totals, reference: Reference, change: torch.Tensor) -> None:
    """Add one chunk of positions whose logits moved by `change` (Δ = z' − z, float32,
    like reference.logits) to the running sums."""
    rows, vocab = change.shape
    scratch = torch.empty(4, BLOCK_ROWS, vocab)
    column_sum = torch.zeros(vocab)
    sums = torch.zeros(4, dtype=torch.float64)  # kl, js, top-1 agreements, nll
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, rows)
        part = reference.rows(start, stop)
        sums += _block(part, change[start:stop], scratch[:, :stop - start], column_sum)
    total.kl += float(sums[0])
    total.js += float(sums[1])
    total.top1 += float(sums[2])
    total.nll += float(sums[3])
    summed = column_sum.double()
    total.alpha = summed if total.alpha is None else total.alpha + summed


def _block(ref: Reference, moved: torch.Tensor, scratch: torch.Tensor,
           column_sum: torch.Tensor) -> torch.Tensor:
    """kl, js, top-1 and nll sums of a block (see the module docstring) whose logits moved
    by Δ (`moved`); adds Σ q to column_sum. `scratch`: (4, rows, vocab) to write in."""
    p = ref.p
    centred, expm1, work, other = scratch
    torch.sub(moved, _dot(p, moved, work).unsqueeze(1), out=centred)
    torch.expm1(centred, out=expm1)
    residual_mean = _dot(p, centred, work).double()  # Σ p x: zero but for rounding
    curvature = _dot(p, torch.sub(expm1, centred, out=work), work).double()  # ≥ 0
    s = residual_mean + curvature
    if not torch.isfinite(s).all():
        return _block_from_log_softmax(ref, moved, column_sum)
    log_normalizer = torch.log1p(s)  # log Σ p e^x ≥ 0
    kl = (log_normalizer - s) + curvature
    scale = (1.0 / (1.0 + s)).float().unsqueeze(1)
    q = torch.addcmul(p, p, expm1, out=other).mul_(scale)
    column_sum += q.sum(0)
    log_ratio_q = _dot(q, centred, work).double() - log_normalizer * q.sum(-1).double()
    half_u = torch.sub(expm1, s.float().unsqueeze(1), out=work).mul_(scale * 0.5)
    log_mid = torch.log1p(half_u, out=work)  # log((p + q)/2 ÷ p)
    mixed = _dot(torch.add(p, q, out=other), log_mid, expm1).double()
    js = 0.5 * (log_ratio_q - mixed)
    log_q_next = (ref.log_p_next.double() + _at(centred, ref.targets.clamp_min(0)).double()
                  - log_normalizer)
    return _sums(ref, torch.add(ref.logits, moved, out=other), kl, js, log_q_next)


def _block_from_log_softmax(ref: Reference, moved: torch.Tensor,
                            column_sum: torch.Tensor) -> torch.Tensor:
    """The same sums from log-softmax, for a block where expm1(Δ) overflows."""
    logits = ref.logits + moved
    log_p = torch.log_softmax(ref.logits, dim=-1)
    log_q = torch.log_softmax(logits, dim=-1)
    q = log_q.exp()
    column_sum += q.sum(0)
    kl = (ref.p * (log_p - log_q)).sum(-1, dtype=torch.float64)
    log_m = torch.log((ref.p + q) / 2).clamp_min(-1e30)
    js = 0.5 * ((ref.p * (log_p - log_m)).sum(-1, dtype=torch.float64)
                + (q * (log_q - log_m)).sum(-1, dtype=torch.float64))
    return _sums(ref, logits, kl, js, _at(log_q, ref.targets.clamp_min(0)).double())


def _sums(ref: Reference, logits: torch.Tensor, kl: torch.Tensor, js: torch.Tensor,
          log_q_next: torch.Tensor) -> torch.Tensor:
    """A block's kl, js, top-1 agreements (from its changed `logits`) and nll (from
    log q of each next token), summed over its positions."""
    agrees = _at(logits, ref.top) >= logits.amax(-1)
    return torch.stack([kl.sum(), js.sum(), agrees.sum().double(),
                        -(log_q_next * (ref.targets >= 0)).sum()])


def _dot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Row-wise Σ a·b (float32), the products written into `scratch` (which may be b)."""
    return torch.mul(a, b, out=scratch).sum(-1)


def _at(values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """values[i, columns[i]] for every row i."""
    return values.gather(1, columns.unsqueeze(1)).squeeze(1)
