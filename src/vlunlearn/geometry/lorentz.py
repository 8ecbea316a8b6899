"""Lorentz model of hyperbolic space with curvature ``-c`` (MERU's formulation).

Only the space components ``x`` of a point are stored; the time component is
``x_t = sqrt(1/c + |x|^2)``. The origin is ``(1/sqrt(c), 0)``. Every function is
pure, takes the curvature magnitude ``c`` as a positive float or 0-dim tensor,
and computes in float32 (float64 inputs stay float64) with autocast disabled,
because these formulas lose all precision in half precision.

Constants and clamps follow MERU (``reference/meru.md`` §1.5).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, TypeVar

import torch
from torch import Tensor

from vlunlearn.geometry.blocks import row_blocks

EPS = 1e-8
MIN_RADIUS = 0.1  # K in the half-aperture formula
_SINH_MAX = math.asinh(2.0**15)

F = TypeVar("F", bound=Callable[..., Tensor])


def float32_island(fn: F) -> F:
    """Run ``fn`` with autocast off and half-precision tensor arguments upcast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def up(a):
            return a.float() if isinstance(a, Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a

        device_type = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def _as_tensor(c: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


@float32_island
def time_component(x: Tensor, c: float | Tensor) -> Tensor:
    """Time component ``sqrt(1/c + |x|^2)``. ``(..., D) -> (...)``."""
    c = _as_tensor(c, x)
    return torch.sqrt(1 / c + (x * x).sum(dim=-1))


@float32_island
def pairwise_inner(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Lorentzian inner product ``<x, y>_L = x_s . y_s - x_t y_t``. ``(B1, D), (B2, D) -> (B1, B2)``."""
    return x @ y.T - time_component(x, c)[:, None] * time_component(y, c)[None, :]


@float32_island
def paired_inner(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Lorentzian inner product of matching rows. ``(B, D), (B, D) -> (B,)``."""
    return (x * y).sum(dim=-1) - time_component(x, c) * time_component(y, c)


def _arcosh_distance(inner: Tensor, c: Tensor) -> Tensor:
    return torch.acosh(torch.clamp(-c * inner, min=1 + EPS)) / torch.sqrt(c)


@float32_island
def pairwise_dist(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Geodesic distance ``arcosh(-c <x, y>_L) / sqrt(c)``. ``(B1, D), (B2, D) -> (B1, B2)``.

    The same formula and clamp as :func:`paired_dist`, computed by :class:`_PairwiseDist`: the
    contrastive losses take it over whole batches, where autograd's chain of elementwise
    ``(B1, B2)`` temporaries would cost more than the matrix product itself."""
    return _PairwiseDist.apply(x, y, _as_tensor(c, x), 1.0)


@float32_island
def pairwise_neg_dist(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """``-pairwise_dist(x, y, c)``, the similarity a contrastive loss ranks by, without a separate
    negation pass over the ``(B1, B2)`` matrix (forward and backward)."""
    return _PairwiseDist.apply(x, y, _as_tensor(c, x), -1.0)


class _PairwiseDist(torch.autograd.Function):
    """``sign * pairwise_dist`` (``sign`` is +1 or -1) as one matrix product and one in-place
    chain per block of rows, with a hand-written backward that keeps one ``(B1, B2)`` buffer.

    With ``z = -c <x, y>_L = c [x, x_t] . [-y, y_t]``, ``t = z - 1`` and
    ``s = sqrt(t (t + 2)) = sqrt(z^2 - 1)``: ``arcosh z = log1p(t + s)``, accurate near z = 1
    (``torch.acosh`` is several times slower on a CPU), and ``d arcosh z / dz = 1 / s``, saved
    as ``-1 / s`` (0 where the clamp holds z at 1 + EPS) for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, c: Tensor, sign: float) -> Tensor:
        tx, ty = time_component(x, c), time_component(y, c)  # (B1,), (B2,)
        # -<x, y>_L as one product; c applied after it, so that swapping x and y gives the same bits
        z = torch.cat([x, tx[:, None]], 1) @ torch.cat([-y, ty[:, None]], 1).T
        t_min = float(torch.tensor(1 + EPS, dtype=z.dtype) - 1)  # the clamp z >= 1 + EPS, as this dtype rounds it
        r_min = float(1 / torch.tensor(t_min * (t_min + 2), dtype=z.dtype).sqrt())  # 1 / s at the clamp
        neg_rs = torch.empty_like(z)
        for rows in row_blocks(*z.shape, z.device):
            block = z[rows].mul_(c).sub_(1).clamp_(min=t_min)  # t = z - 1
            s = torch.mul(block, 2, out=neg_rs[rows]).addcmul_(block, block).sqrt_()
            block.add_(s).log1p_().mul_(sign / torch.sqrt(c))
            # -1 / s, set to 0 at the clamp: there -1/s == -r_min, below it everywhere else
            torch.nn.functional.threshold_(s.reciprocal_().neg_(), -r_min, 0.0)
        ctx.save_for_backward(x, y, c, tx, ty, neg_rs, z)
        ctx.sign = sign
        return z  # now the output: its buffer was overwritten block by block

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, y, c, tx, ty, neg_rs, out = ctx.saved_tensors
        # d loss / dz = k * g, with the scalar k applied to the (B, D) products, not to the (B1, B2) matrix
        k = -ctx.sign / torch.sqrt(c)
        g, blocks = torch.empty_like(neg_rs), row_blocks(*neg_rs.shape, neg_rs.device)
        if ctx.needs_input_grad[2]:
            # d = arcosh(z) / sqrt(c): -d / (2c) from the divisor; through z = c w, dz/dc = w + c dw/dc with
            # w = z / c and c dw/dc = -(y_t / x_t + x_t / y_t) / (2c). Summed block by block, while in cache.
            by_out = by_z = by_time = torch.zeros((), dtype=g.dtype, device=g.device)
            scratch, times = neg_rs.new_empty(neg_rs[blocks[0]].shape), torch.stack([ty, 1 / ty], 1)  # (B2, 2)
        for rows in blocks:
            g_rows = torch.mul(grad[rows], neg_rs[rows], out=g[rows])
            if ctx.needs_input_grad[2]:
                # z = sqrt(1 + s^2) from -1/s; infinite on the clamp, where g is 0, so capped to stay finite
                z = torch.reciprocal(neg_rs[rows], out=scratch[: len(g_rows)]).square_().add_(1).sqrt_()
                z.clamp_(max=torch.finfo(z.dtype).max)
                by_out = by_out + torch.dot(grad[rows].reshape(-1), out[rows].reshape(-1))
                by_z = by_z + torch.dot(g_rows.reshape(-1), z.reshape(-1))
                m = g_rows @ times  # (rows, 2)
                by_time = by_time + (m[:, 0] / tx[rows]).sum() + (tx[rows] * m[:, 1]).sum()
        grad_x = grad_y = grad_c = None
        # z = c (x_t y_t - x . y) and d x_t / d x = x / x_t
        if ctx.needs_input_grad[0]:
            m = g @ torch.cat([y, ty[:, None]], 1)  # (B1, D + 1)
            grad_x = (c * k) * (m[:, -1:] * x / tx[:, None] - m[:, :-1])
        if ctx.needs_input_grad[1]:
            m = g.T @ torch.cat([x, tx[:, None]], 1)  # (B2, D + 1)
            grad_y = (c * k) * (m[:, -1:] * y / ty[:, None] - m[:, :-1])
        if ctx.needs_input_grad[2]:
            grad_c = (-by_out + k * (2 * by_z - by_time)) / (2 * c)
        return grad_x, grad_y, grad_c, None


@float32_island
def paired_dist(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Geodesic distance between matching rows. ``(B, D), (B, D) -> (B,)``."""
    return _arcosh_distance(paired_inner(x, y, c), _as_tensor(c, x))


@float32_island
def exp_map0(v: Tensor, c: float | Tensor) -> Tensor:
    """Exponential map at the origin: tangent vector -> space components. ``(..., D) -> (..., D)``."""
    sqrt_c = torch.sqrt(_as_tensor(c, v))
    rc_norm = sqrt_c * v.norm(dim=-1, keepdim=True)
    sinh_arg = torch.clamp(rc_norm, min=EPS, max=_SINH_MAX)
    return torch.sinh(sinh_arg) * v / torch.clamp(rc_norm, min=EPS)


@float32_island
def log_map0(x: Tensor, c: float | Tensor) -> Tensor:
    """Logarithmic map at the origin (inverse of :func:`exp_map0`). ``(..., D) -> (..., D)``."""
    c = _as_tensor(c, x)
    rc_norm = torch.sqrt(c) * x.norm(dim=-1, keepdim=True)
    # asinh(r) == arcosh(sqrt(1 + r^2)) (MERU's form) but keeps precision near the origin.
    # Clamp inside the ratio asinh(r)/r (-> 1 as r -> 0), so tiny x map to ~x, not x * r / EPS.
    rc_norm = torch.clamp(rc_norm, min=EPS)
    return torch.asinh(rc_norm) * x / rc_norm


@float32_island
def dist_to_origin(x: Tensor, c: float | Tensor) -> Tensor:
    """Geodesic distance to the origin, equal to ``|log_map0(x)|``. ``(..., D) -> (...)``."""
    c = _as_tensor(c, x)
    rc_norm = torch.sqrt(c) * x.norm(dim=-1)
    return torch.asinh(rc_norm) / torch.sqrt(c)


@float32_island
def half_aperture(x: Tensor, c: float | Tensor, min_radius: float = MIN_RADIUS) -> Tensor:
    """Half-aperture of the entailment cone at ``x``: ``arcsin(2K / (sqrt(c) |x|))``. ``(..., D) -> (...)``."""
    c = _as_tensor(c, x)
    sin_aper = 2 * min_radius / (torch.sqrt(c) * x.norm(dim=-1) + EPS)
    return torch.asin(torch.clamp(sin_aper, min=-1 + EPS, max=1 - EPS))


@float32_island
def exterior_angle(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Exterior angle at ``x`` of the triangle origin-``x``-``y`` (the angle of ``y`` off the
    cone axis through ``x``). ``(B, D), (B, D) -> (B,)``."""
    c = _as_tensor(c, x)
    x_t = time_component(x, c)
    y_t = time_component(y, c)
    c_inner = c * paired_inner(x, y, c)
    numerator = y_t + c_inner * x_t
    denominator = x.norm(dim=-1) * torch.sqrt(torch.clamp(c_inner**2 - 1, min=EPS))
    return torch.acos(torch.clamp(numerator / (denominator + EPS), min=-1 + EPS, max=1 - EPS))
