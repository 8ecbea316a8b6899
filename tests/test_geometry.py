"""Lorentz and Euclidean geometry: identities, closed forms, an independent
exterior-angle derivation, gradients at the extremes, and the float32 island.

Everything is float64 unless a test is about precision handling.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vlunlearn.geometry import EUCLIDEAN, LORENTZ, blocks, euclidean, get_geometry, lorentz

F64 = torch.float64
CURVATURES = [0.1, 1.0, 10.0]
# The exp map clamps its sinh argument at asinh(2^15); it is only invertible below that.
SINH_MAX = math.asinh(2.0**15)
# Smallest distance the arcosh clamp can return (times 1/sqrt(c)).
DIST_FLOOR = math.acosh(1 + lorentz.EPS)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_vectors(n, d, norms, seed=0):
    """``n`` random directions in R^d scaled to the given norms (scalar or ``(n,)``)."""
    g = gen(seed)
    v = torch.randn(n, d, generator=g, dtype=F64)
    v = v / v.norm(dim=-1, keepdim=True)
    return v * torch.as_tensor(norms, dtype=F64).reshape(-1, 1)


def log_norms(n, lo, hi, seed=0):
    g = gen(seed + 1000)
    return 10 ** (math.log10(lo) + (math.log10(hi) - math.log10(lo)) * torch.rand(n, generator=g, dtype=F64))


def random_points(n, d, c, lo=0.05, hi=3.0, seed=0):
    """Points on the hyperboloid (space components) at geodesic distance in [lo, hi] from the origin."""
    return lorentz.exp_map0(random_vectors(n, d, log_norms(n, lo, hi, seed), seed), c)


def max_tangent_norm(c, cap=10.0):
    return min(cap, 0.99 * SINH_MAX / math.sqrt(c))


# --------------------------------------------------------------------------- exp / log


@pytest.mark.parametrize("c", CURVATURES)
def test_log_inverts_exp(c):
    norms = torch.cat([torch.tensor([1e-6, 1e-3, 1.0], dtype=F64), log_norms(200, 1e-6, max_tangent_norm(c))])
    norms = torch.cat([norms, torch.tensor([max_tangent_norm(c)], dtype=F64)])
    v = random_vectors(len(norms), 7, norms, seed=1)
    torch.testing.assert_close(lorentz.log_map0(lorentz.exp_map0(v, c), c), v, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_inverts_log(c):
    norms = torch.cat([torch.tensor([1e-6, 1e-3, 1.0, 10.0], dtype=F64), log_norms(200, 1e-6, 10.0)])
    x = random_vectors(len(norms), 7, norms, seed=2)
    torch.testing.assert_close(lorentz.exp_map0(lorentz.log_map0(x, c), c), x, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_log_inverse_below_clamp_epsilon(c):
    # Norms below EPS / sqrt(c): both maps must still be ~identity there, not scaled by |x| / EPS.
    x = random_vectors(4, 5, torch.tensor([1e-12, 1e-10, 1e-9, 5e-9], dtype=F64), seed=3)
    torch.testing.assert_close(lorentz.exp_map0(x, c), x, rtol=1e-12, atol=0)
    torch.testing.assert_close(lorentz.log_map0(x, c), x, rtol=1e-12, atol=0)


def test_exp_map0_matches_formula_and_clamps():
    c = 2.0
    v = random_vectors(50, 4, log_norms(50, 1e-3, 5.0, seed=4), seed=4)
    r = math.sqrt(c) * v.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(lorentz.exp_map0(v, c), torch.sinh(r) * v / r, rtol=1e-12, atol=0)
    # Past the clamp the space norm saturates at 2^15 / sqrt(c) and stays finite.
    big = random_vectors(3, 4, torch.tensor([50.0, 1e3, 1e6], dtype=F64), seed=5)
    out = lorentz.exp_map0(big, c)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((3,), 2.0**15 / math.sqrt(c), dtype=F64))


def test_log_map0_direction_and_norm():
    c = 0.5
    x = random_vectors(50, 6, log_norms(50, 1e-4, 100.0, seed=6), seed=6)
    v = lorentz.log_map0(x, c)
    # Same direction, norm asinh(sqrt(c)|x|)/sqrt(c).
    cos = (v * x).sum(-1) / (v.norm(dim=-1) * x.norm(dim=-1))
    torch.testing.assert_close(cos, torch.ones(50, dtype=F64))
    expected = torch.asinh(math.sqrt(c) * x.norm(dim=-1)) / math.sqrt(c)
    torch.testing.assert_close(v.norm(dim=-1), expected, rtol=1e-12, atol=0)


def test_tensor_curvature_matches_float_curvature():
    x = random_points(10, 4, 1.0, seed=7)
    y = random_points(10, 4, 1.0, seed=8)
    for c in CURVATURES:
        ct = torch.tensor(c, dtype=F64)
        torch.testing.assert_close(lorentz.pairwise_dist(x, y, ct), lorentz.pairwise_dist(x, y, c))
        torch.testing.assert_close(lorentz.exp_map0(x, ct), lorentz.exp_map0(x, c))
        torch.testing.assert_close(lorentz.log_map0(x, ct), lorentz.log_map0(x, c))
        torch.testing.assert_close(lorentz.exterior_angle(x, y, ct), lorentz.exterior_angle(x, y, c))


# --------------------------------------------------------------------------- distances


@pytest.mark.parametrize("c", CURVATURES)
def test_pairwise_dist_is_a_metric(c):
    x = random_points(40, 5, c, seed=10)
    d = lorentz.pairwise_dist(x, x, c)
    torch.testing.assert_close(d, d.T, rtol=1e-12, atol=1e-12)
    assert (d >= 0).all()
    # The diagonal is zero up to the arcosh clamp (and rounding in -c<x,x>_L = 1).
    diag = torch.diagonal(d)
    assert (diag <= 1.5 * DIST_FLOOR / math.sqrt(c)).all(), diag.max()
    off = d[~torch.eye(40, dtype=torch.bool)]
    assert (off > 10 * DIST_FLOOR / math.sqrt(c)).all()


@pytest.mark.parametrize("c", CURVATURES)
def test_triangle_inequality(c):
    n = 300
    a, b, e = (random_points(n, 3, c, seed=s) for s in (11, 12, 13))
    ab, be, ae = lorentz.paired_dist(a, b, c), lorentz.paired_dist(b, e, c), lorentz.paired_dist(a, e, c)
    assert (ae <= ab + be + 1e-9).all()
    assert (ab <= ae + be + 1e-9).all()
    # Near-tight triples: b on the geodesic from a to e (midpoint in the tangent space at the
    # origin is not on that geodesic in general, so use collinear-through-origin points).
    direction = random_vectors(n, 3, 1.0, seed=14)
    s = torch.rand(n, 3, generator=gen(15), dtype=F64).sort(dim=-1).values * 2 - 1  # in [-1, 1]
    pts = [lorentz.exp_map0(direction * s[:, k : k + 1], c) for k in range(3)]
    lhs = lorentz.paired_dist(pts[0], pts[2], c)
    rhs = lorentz.paired_dist(pts[0], pts[1], c) + lorentz.paired_dist(pts[1], pts[2], c)
    assert (lhs <= rhs + 1e-9).all()
    torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=3 * DIST_FLOOR / math.sqrt(c))


@pytest.mark.parametrize("c", CURVATURES)
def test_paired_dist_is_pairwise_diagonal(c):
    x = random_points(30, 6, c, seed=16)
    y = random_points(30, 6, c, seed=17)
    torch.testing.assert_close(lorentz.paired_dist(x, y, c), torch.diagonal(lorentz.pairwise_dist(x, y, c)))
    torch.testing.assert_close(lorentz.paired_inner(x, y, c), torch.diagonal(lorentz.pairwise_inner(x, y, c)))


@pytest.mark.parametrize("c", CURVATURES)
def test_dist_to_origin_identities(c):
    norms = log_norms(100, 1e-2 / math.sqrt(c), max_tangent_norm(c), seed=18)
    v = random_vectors(100, 5, norms, seed=18)
    x = lorentz.exp_map0(v, c)
    torch.testing.assert_close(lorentz.dist_to_origin(x, c), v.norm(dim=-1), rtol=1e-10, atol=0)
    origin = torch.zeros(1, 5, dtype=F64)
    torch.testing.assert_close(lorentz.dist_to_origin(x, c), lorentz.pairwise_dist(x, origin, c)[:, 0], rtol=1e-8, atol=0)
    torch.testing.assert_close(lorentz.log_map0(x, c).norm(dim=-1), lorentz.dist_to_origin(x, c), rtol=1e-12, atol=0)
    # Also for tiny points, where arcosh-based distances are clamped but dist_to_origin is not.
    tiny = random_vectors(3, 5, torch.tensor([1e-9, 1e-6, 1e-4], dtype=F64), seed=19)
    torch.testing.assert_close(lorentz.dist_to_origin(tiny, c), tiny.norm(dim=-1), rtol=1e-7, atol=0)


def test_distance_closed_form_on_one_axis():
    c = 1.0
    g = gen(20)
    a = torch.rand(200, generator=g, dtype=F64) * 10 - 5
    b = torch.rand(200, generator=g, dtype=F64) * 10 - 5
    keep = (a - b).abs() > 0.05
    a, b = a[keep], b[keep]
    e1 = torch.zeros(1, 4, dtype=F64)
    e1[0, 0] = 1.0
    xa, xb = lorentz.exp_map0(a[:, None] * e1, c), lorentz.exp_map0(b[:, None] * e1, c)
    torch.testing.assert_close(xa[:, 0], torch.sinh(a))
    torch.testing.assert_close(lorentz.paired_dist(xa, xb, c), (a - b).abs(), rtol=1e-9, atol=1e-10)
    gap = (a[:, None] - b[None, :]).abs()
    far = gap > 0.05
    torch.testing.assert_close(lorentz.pairwise_dist(xa, xb, c)[far], gap[far], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("c", CURVATURES)
def test_time_component_on_hyperboloid(c):
    x = random_vectors(100, 5, log_norms(100, 1e-6, 10.0, seed=21), seed=21)
    xt = lorentz.time_component(x, c)
    assert (xt > 0).all()
    constraint = -(xt**2) + (x * x).sum(-1)
    scale = 1e-14 * (1 / c + (x * x).sum(-1))
    assert ((constraint + 1 / c).abs() <= scale).all()
    # The origin's time component is 1/sqrt(c).
    torch.testing.assert_close(lorentz.time_component(torch.zeros(3, dtype=F64), c), torch.tensor(1 / math.sqrt(c), dtype=F64))
    # <x, x>_L = -1/c via the module's own inner product.
    torch.testing.assert_close(
        lorentz.paired_inner(x, x, c), torch.full((100,), -1 / c, dtype=F64), rtol=0, atol=1e-12 * (1 + c * 100)
    )


# --------------------------------------------------------------------------- entailment cone


@pytest.mark.parametrize("c", CURVATURES)
def test_half_aperture(c):
    K = lorentz.MIN_RADIUS
    radius = 2 * K / math.sqrt(c)
    # Large norms: the plain formula.
    big = random_vectors(50, 4, radius * (1.05 + 100 * torch.rand(50, generator=gen(22), dtype=F64)), seed=22)
    expected = torch.asin(2 * K / (math.sqrt(c) * big.norm(dim=-1)))
    torch.testing.assert_close(lorentz.half_aperture(big, c), expected, rtol=1e-7, atol=0)
    # Inside the radius the arcsin argument saturates at 1 - EPS: aperture ~ pi/2.
    small = random_vectors(5, 4, radius * torch.tensor([0.0, 1e-6, 0.1, 0.5, 0.99], dtype=F64), seed=23)
    ha = lorentz.half_aperture(small, c)
    assert ((ha - math.pi / 2).abs() < 2e-4).all(), ha
    # Non-increasing in the norm everywhere, strictly decreasing past the radius.
    norms = radius * 10 ** torch.linspace(-3, 3, 200, dtype=F64)
    line = lorentz.half_aperture(random_vectors(1, 4, 1.0, seed=24) * norms[:, None], c)
    assert (line[1:] <= line[:-1]).all()
    outside = norms > 1.01 * radius
    assert (line[outside][1:] < line[outside][:-1]).all()
    assert line[-1] < 1e-2


def _full(x, c):
    """Space components -> full (d+1) hyperboloid coordinates (time first)."""
    t = torch.sqrt(1 / c + (x * x).sum(-1, keepdim=True))
    return torch.cat([t, x], dim=-1)


def _lorentz_inner(a, b):
    return -a[..., 0] * b[..., 0] + (a[..., 1:] * b[..., 1:]).sum(-1)


def _riemannian_log(X, Y, c):
    """log_X(Y) on {<X,X>_L = -1/c}: d(X,Y) * u / |u|_L with u = Y + c<X,Y>_L X (the projection of Y
    onto the tangent space at X, since <X, u>_L = <X,Y>_L - c<X,Y>_L/c = 0)."""
    inner = _lorentz_inner(X, Y)
    u = Y + c * inner[..., None] * X
    dist = torch.acosh(-c * inner) / math.sqrt(c)
    return dist[..., None] * u / torch.sqrt(_lorentz_inner(u, u))[..., None]


@pytest.mark.parametrize("c", CURVATURES)
def test_exterior_angle_matches_riemannian_construction(c):
    n, d = 1000, 4
    x = random_points(n, d, c, lo=0.2, hi=3.0, seed=25)
    y = random_points(n, d, c, lo=0.05, hi=3.0, seed=26)
    X, Y = _full(x, c), _full(y, c)
    O = torch.zeros_like(X)
    O[:, 0] = 1 / math.sqrt(c)
    to_origin, to_y = _riemannian_log(X, O, c), _riemannian_log(X, Y, c)
    # Sanity of the construction: both are tangent at X, and |log_X(Y)|_L = d(X, Y).
    assert _lorentz_inner(X, to_y).abs().max() < 1e-9 * (1 + X.abs().max() * Y.abs().max())
    torch.testing.assert_close(torch.sqrt(_lorentz_inner(to_y, to_y)), lorentz.paired_dist(x, y, c), rtol=1e-8, atol=0)
    cos_interior = _lorentz_inner(to_origin, to_y) / torch.sqrt(
        _lorentz_inner(to_origin, to_origin) * _lorentz_inner(to_y, to_y)
    )
    interior = torch.acos(cos_interior.clamp(-1, 1))
    # Away from degenerate triangles: y not near x, angles not near 0 or pi (where the clamps bite),
    # and the MERU "+ 1e-8" in the denominator |x| sinh(sqrt(c) d) moving the angle by < 1e-7.
    dist = lorentz.paired_dist(x, y, c)
    denominator = x.norm(dim=-1) * torch.sinh(math.sqrt(c) * dist)
    eps_shift = lorentz.EPS / denominator / torch.sin(interior)
    ok = (dist > 0.1 / math.sqrt(c)) & (interior > 0.05) & (interior < math.pi - 0.05) & (eps_shift < 1e-7)
    assert ok.sum() > n // 4
    torch.testing.assert_close(lorentz.exterior_angle(x, y, c)[ok], (math.pi - interior)[ok], rtol=0, atol=1e-6)


def test_exterior_angle_special_configurations():
    c = 1.0
    direction = random_vectors(10, 3, 1.0, seed=27)
    x = lorentz.exp_map0(direction, c)
    # y further out along the same ray: straight ahead of the cone axis, angle ~ 0.
    ahead = lorentz.exp_map0(2 * direction, c)
    assert (lorentz.exterior_angle(x, ahead, c) < 1e-3).all()
    # y between the origin and x: straight back, angle ~ pi.
    behind = lorentz.exp_map0(0.3 * direction, c)
    assert (lorentz.exterior_angle(x, behind, c) > math.pi - 1e-3).all()


def test_exterior_angle_saturates_at_the_clamps():
    # On the cone axis far from the origin, acos's argument is +-(1 - EPS / (|x| sinh d)) with
    # |x| sinh d ~ 36 here: the +-(1 - EPS) clamps bite, so the angles are exactly acos(+-(1 - EPS)).
    c = 1.0
    direction = random_vectors(4, 3, 1.0, seed=41)
    x = lorentz.exp_map0(3 * direction, c)
    ahead, behind = lorentz.exp_map0(5 * direction, c), lorentz.exp_map0(direction, c)
    edge = torch.full((4,), math.acos(1 - lorentz.EPS), dtype=F64)
    torch.testing.assert_close(lorentz.exterior_angle(x, ahead, c), edge, rtol=0, atol=1e-12)
    torch.testing.assert_close(lorentz.exterior_angle(x, behind, c), math.pi - edge, rtol=0, atol=1e-12)

# --------------------------------------------------------------------------- gradients


def _all_functions():
    """(name, fn(x, y, c) -> Tensor) for every differentiable Lorentz function."""
    return [
        ("exp_map0", lambda x, y, c: lorentz.exp_map0(x, c)),
        ("log_map0", lambda x, y, c: lorentz.log_map0(x, c)),
        ("pairwise_dist", lambda x, y, c: lorentz.pairwise_dist(x, y, c)),
        ("paired_dist", lambda x, y, c: lorentz.paired_dist(x, y, c)),
        ("dist_to_origin", lambda x, y, c: lorentz.dist_to_origin(x, c)),
        ("half_aperture", lambda x, y, c: lorentz.half_aperture(x, c)),
        ("exterior_angle", lambda x, y, c: lorentz.exterior_angle(x, y, c)),
    ]


def _check_finite_grads(fn, x, y, c):
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    c = torch.tensor(c, dtype=F64, requires_grad=True)
    out = fn(x, y, c)
    assert torch.isfinite(out).all(), out
    gx, gy, gc = torch.autograd.grad(out.sum(), [x, y, c], allow_unused=True)
    for g in (gx, gy, gc):
        assert g is None or torch.isfinite(g).all(), g


@pytest.mark.parametrize("name,fn", _all_functions(), ids=[n for n, _ in _all_functions()])
@pytest.mark.parametrize("c", CURVATURES)
def test_gradients_finite_at_origin(name, fn, c):
    zeros = torch.zeros(3, 4, dtype=F64)
    _check_finite_grads(fn, zeros, zeros, c)  # both at the origin
    _check_finite_grads(fn, zeros, random_points(3, 4, c, seed=28), c)  # x at the origin only
    _check_finite_grads(fn, random_points(3, 4, c, seed=29), zeros, c)  # y at the origin only


@pytest.mark.parametrize("name,fn", _all_functions(), ids=[n for n, _ in _all_functions()])
@pytest.mark.parametrize("c", CURVATURES)
def test_gradients_finite_at_large_norms(name, fn, c):
    norm = 1e3 if name == "exp_map0" else 1e6
    x = random_vectors(3, 4, norm, seed=30)
    y = random_vectors(3, 4, norm, seed=31)
    _check_finite_grads(fn, x, y, c)
    _check_finite_grads(fn, x, x.clone(), c)  # coincident far points


def test_log_map0_gradient_is_identity_at_origin():
    # d log_map0 / dx = I at x = 0 (as for exp_map0); the clamp must not zero or blow it up.
    for fn in (lorentz.exp_map0, lorentz.log_map0):
        x = torch.zeros(4, dtype=F64, requires_grad=True)
        jac = torch.autograd.functional.jacobian(lambda v: fn(v, 1.0), x)
        torch.testing.assert_close(jac, torch.eye(4, dtype=F64), rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------------------- float32 island


def _island_cases():
    g = gen(32)
    v = torch.randn(6, 8, generator=g) * 0.5
    x = lorentz.exp_map0(v, 1.0)
    y = lorentz.exp_map0(torch.randn(6, 8, generator=g) * 0.5, 1.0)
    c = 1.0
    return [
        ("time_component", lambda a, b: lorentz.time_component(a, c), x, y),
        ("pairwise_inner", lambda a, b: lorentz.pairwise_inner(a, b, c), x, y),
        ("paired_inner", lambda a, b: lorentz.paired_inner(a, b, c), x, y),
        ("exp_map0", lambda a, b: lorentz.exp_map0(a, c), v, y),
        ("log_map0", lambda a, b: lorentz.log_map0(a, c), x, y),
        ("pairwise_dist", lambda a, b: lorentz.pairwise_dist(a, b, c), x, y),
        ("paired_dist", lambda a, b: lorentz.paired_dist(a, b, c), x, y),
        ("dist_to_origin", lambda a, b: lorentz.dist_to_origin(a, c), x, y),
        ("half_aperture", lambda a, b: lorentz.half_aperture(a, c), x, y),
        ("exterior_angle", lambda a, b: lorentz.exterior_angle(a, b, c), x, y),
    ]


@pytest.mark.parametrize("name,fn,a,b", _island_cases(), ids=[case[0] for case in _island_cases()])
def test_float32_island_under_bfloat16_autocast(name, fn, a, b):
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    reference = fn(a16.float(), b16.float())  # float32, no autocast
    assert reference.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = fn(a16, b16)
        out32 = fn(a, b)  # float32 inputs must not be downcast by autocast either
    assert out16.dtype == torch.float32
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out16, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out32, fn(a, b), rtol=1e-6, atol=1e-6)


def test_float64_inputs_stay_float64():
    x = random_points(4, 3, 1.0, seed=33)
    for name, fn in _all_functions():
        assert fn(x, x, 1.0).dtype == F64, name


# --------------------------------------------------------------------------- property-based

vector_entries = st.floats(-5, 5, allow_nan=False, allow_infinity=False, allow_subnormal=False)
curvatures = st.floats(0.1, 10.0)


@st.composite
def tangent_vectors(draw, max_dim=8):
    dim = draw(st.integers(1, max_dim))
    direction = draw(st.lists(vector_entries, min_size=dim, max_size=dim))
    log10_norm = draw(st.floats(-10, 1))
    v = torch.tensor(direction, dtype=F64)
    assume(v.norm() > 1e-3)
    return v / v.norm() * 10**log10_norm


@settings(max_examples=50, deadline=None)
@given(v=tangent_vectors(), c=curvatures)
def test_property_log_inverts_exp(v, c):
    assume(math.sqrt(c) * v.norm().item() < 0.99 * SINH_MAX)
    torch.testing.assert_close(lorentz.log_map0(lorentz.exp_map0(v, c), c), v, rtol=1e-9, atol=1e-15)


@settings(max_examples=50, deadline=None)
@given(x=tangent_vectors(), c=curvatures)
def test_property_exp_inverts_log(x, c):
    torch.testing.assert_close(lorentz.exp_map0(lorentz.log_map0(x, c), c), x, rtol=1e-9, atol=1e-15)


@settings(max_examples=50, deadline=None)
@given(v=st.lists(vector_entries, min_size=1, max_size=6), c=curvatures)
def test_property_raw_vectors_roundtrip(v, c):
    # Raw draws include zeros, tiny and mixed-scale entries.
    v = torch.tensor(v, dtype=F64)
    assume(math.sqrt(c) * v.norm().item() < 0.99 * SINH_MAX)
    torch.testing.assert_close(lorentz.log_map0(lorentz.exp_map0(v, c), c), v, rtol=1e-9, atol=1e-15)


@st.composite
def point_batches(draw):
    dim = draw(st.integers(1, 5))
    n1, n2 = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rows = st.lists(vector_entries, min_size=dim, max_size=dim)
    x = torch.tensor(draw(st.lists(rows, min_size=n1, max_size=n1)), dtype=F64)
    y = torch.tensor(draw(st.lists(rows, min_size=n2, max_size=n2)), dtype=F64)
    return x, y


@settings(max_examples=50, deadline=None)
@given(batches=point_batches(), c=curvatures)
def test_property_distance_symmetry(batches, c):
    v, w = batches
    x, y = lorentz.exp_map0(v, c), lorentz.exp_map0(w, c)
    dxy = lorentz.pairwise_dist(x, y, c)
    assert dxy.shape == (len(x), len(y))
    assert (dxy >= 0).all() and torch.isfinite(dxy).all()
    # Symmetric up to the rounding of -c <x, y>_L, a sum of D + 1 products up to c x_t y_t each
    # (a matrix product may sum them in another order once x and y swap), through
    # |arcosh(z1) - arcosh(z2)| <= sqrt(2 |z1 - z2|): wide only for far, nearly coincident points.
    times = torch.outer(lorentz.time_component(x, c), lorentz.time_component(y, c))
    rounding = 4 * (x.shape[1] + 1) * torch.finfo(F64).eps * c * times
    gap = (dxy - lorentz.pairwise_dist(y, x, c).T).abs()
    assert (gap <= torch.sqrt(2 * rounding / c) + 1e-12 * (1 + dxy)).all()
    k = min(len(x), len(y))
    torch.testing.assert_close(lorentz.paired_dist(x[:k], y[:k], c), lorentz.paired_dist(y[:k], x[:k], c))


_ANY_LEADING_SHAPE = [  # documented ``(..., D) -> (...)`` or ``(..., D) -> (..., D)``
    ("time_component", lambda x: lorentz.time_component(x, 2.0)),
    ("exp_map0", lambda x: lorentz.exp_map0(x, 2.0)),
    ("log_map0", lambda x: lorentz.log_map0(x, 2.0)),
    ("dist_to_origin", lambda x: lorentz.dist_to_origin(x, 2.0)),
    ("half_aperture", lambda x: lorentz.half_aperture(x, 2.0)),
    ("normalize", euclidean.normalize),
]


@pytest.mark.parametrize("name,fn", _ANY_LEADING_SHAPE, ids=[n for n, _ in _ANY_LEADING_SHAPE])
def test_leading_dimensions_are_batch_dimensions(name, fn):
    x = random_vectors(6, 4, log_norms(6, 0.1, 3.0, seed=42), seed=42)
    flat = fn(x)
    torch.testing.assert_close(fn(x.reshape(2, 3, 4)), flat.reshape(2, 3, *flat.shape[1:]), rtol=0, atol=0)
    torch.testing.assert_close(fn(x[0]), flat[0], rtol=0, atol=0)

# --------------------------------------------------------------------------- Euclidean


def test_normalize_gives_unit_norm():
    x = random_vectors(20, 6, log_norms(20, 1e-4, 1e4, seed=34), seed=34)
    n = euclidean.normalize(x)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(20, dtype=F64))
    torch.testing.assert_close(n * x.norm(dim=-1, keepdim=True), x)
    # Zero vectors stay finite (zero) instead of NaN.
    assert torch.equal(euclidean.normalize(torch.zeros(2, 3, dtype=F64)), torch.zeros(2, 3, dtype=F64))


def test_pairwise_and_paired_cosine():
    g = gen(35)
    x = torch.randn(7, 5, generator=g, dtype=F64) * 3
    y = torch.randn(9, 5, generator=g, dtype=F64) * 0.2
    expected = torch.tensor(
        [[float(xi @ yj / (xi.norm() * yj.norm())) for yj in y] for xi in x], dtype=F64
    )
    cos = euclidean.pairwise_cosine(x, y)
    torch.testing.assert_close(cos, expected)
    assert (cos.abs() <= 1 + 1e-12).all()
    torch.testing.assert_close(euclidean.paired_cosine(x, y[:7]), torch.diagonal(euclidean.pairwise_cosine(x, y[:7])))
    torch.testing.assert_close(euclidean.pairwise_cosine(x, x).diagonal(), torch.ones(7, dtype=F64))


# --------------------------------------------------------------------------- Geometry objects


def test_get_geometry():
    assert get_geometry("euclidean") is EUCLIDEAN
    assert get_geometry("lorentz") is LORENTZ
    assert LORENTZ.hyperbolic and not EUCLIDEAN.hyperbolic
    with pytest.raises(ValueError) as info:
        get_geometry("bad")
    message = str(info.value)
    assert "bad" in message and "euclidean" in message and "lorentz" in message


@pytest.mark.parametrize("c", CURVATURES)
def test_lorentz_geometry_similarities_and_charts(c):
    g = gen(36)
    f1, f2 = torch.randn(5, 8, generator=g, dtype=F64), torch.randn(6, 8, generator=g, dtype=F64)
    scale = torch.tensor(0.3, dtype=F64)
    x, y = LORENTZ.embed(f1, scale, c), LORENTZ.embed(f2, scale, c)
    torch.testing.assert_close(x, lorentz.exp_map0(f1 * scale, c))
    torch.testing.assert_close(LORENTZ.pairwise_similarity(x, y, c), -lorentz.pairwise_dist(x, y, c))
    torch.testing.assert_close(LORENTZ.paired_similarity(x, y[:5], c), -lorentz.paired_dist(x, y[:5], c))
    torch.testing.assert_close(LORENTZ.from_tangent(LORENTZ.to_tangent(x, c), c), x)


@pytest.mark.parametrize("c", CURVATURES)
def test_lorentz_mean_is_exp_of_mean_log(c):
    x = random_points(9, 6, c, seed=37)
    mean = LORENTZ.mean(x, c)
    assert mean.shape == (6,)
    torch.testing.assert_close(mean, lorentz.exp_map0(lorentz.log_map0(x, c).mean(dim=0), c))
    # Not the naive space-component mean (the maps are nonlinear).
    assert not torch.allclose(mean, x.mean(dim=0), rtol=1e-3, atol=1e-6)
    # Mean of identical points is that point.
    torch.testing.assert_close(LORENTZ.mean(x[:1].expand(4, -1), c), x[0])


def test_euclidean_geometry():
    g = gen(38)
    f1, f2 = torch.randn(5, 8, generator=g, dtype=F64) * 4, torch.randn(6, 8, generator=g, dtype=F64)
    x, y = EUCLIDEAN.embed(f1, None, None), EUCLIDEAN.embed(f2, None, None)
    torch.testing.assert_close(x, euclidean.normalize(f1))
    torch.testing.assert_close(EUCLIDEAN.pairwise_similarity(x, y, None), euclidean.pairwise_cosine(x, y))
    torch.testing.assert_close(EUCLIDEAN.paired_similarity(x, y[:5], None), euclidean.paired_cosine(x, y[:5]))
    # Prompt ensembling on embeddings: normalise each, average, normalise.
    expected = euclidean.normalize(euclidean.normalize(f1).mean(dim=0))
    mean = EUCLIDEAN.mean(x, None)
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(mean.norm(), torch.tensor(1.0, dtype=F64))


@pytest.mark.parametrize("block_elements", [7, blocks.BLOCK_ELEMENTS])
@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0])
def test_the_fused_pairwise_distance_matches_the_formula_and_its_gradients(scale, block_elements, monkeypatch):
    """``pairwise_dist`` (a hand-written backward) against the same formula through autograd:
    values, gradients for both point sets and the curvature, clamped entries included, with
    the matrix in one block of rows and in blocks of one row (7 elements, 6 columns)."""
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", block_elements)
    generator = torch.Generator().manual_seed(7)
    x = (torch.randn(6, 5, generator=generator, dtype=torch.float64) * scale).requires_grad_()
    y = torch.cat([x.detach()[:2], torch.randn(4, 5, generator=generator, dtype=torch.float64) * scale]).requires_grad_()
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lorentz.pairwise_dist, (x, y, c))
    assert torch.autograd.gradcheck(lorentz.pairwise_neg_dist, (x, y, c))
    reference = lorentz._arcosh_distance(lorentz.pairwise_inner(x, y, c), c)
    fused = lorentz.pairwise_dist(x, y, c)
    weights = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(lorentz.pairwise_neg_dist(x, y, c), -reference)
    for got, expected in zip(torch.autograd.grad((fused * weights).sum(), (x, y, c)),
                             torch.autograd.grad((reference * weights).sum(), (x, y, c))):
        torch.testing.assert_close(got, expected)


def test_the_fused_pairwise_distance_in_float32_is_zero_with_zero_gradient_on_the_clamp():
    """In float32 ``1 + EPS`` rounds to 1, so coincident points at (or within 1e-4 of) the origin
    sit on the clamp: their distance is 0 and contributes no gradient (autograd through
    ``torch.acosh`` would give inf * 0 = NaN); every other entry matches float64."""
    generator = torch.Generator().manual_seed(3)
    near_origin = torch.cat([torch.zeros(1, 8, dtype=F64), torch.full((1, 8), 1e-5, dtype=F64)])
    x64 = torch.cat([near_origin, lorentz.exp_map0(torch.randn(3, 8, generator=generator, dtype=F64), 1.0)])
    y64 = torch.cat([near_origin, lorentz.exp_map0(torch.randn(3, 8, generator=generator, dtype=F64), 1.0)])
    x, y = x64.float().requires_grad_(), y64.float().requires_grad_()
    distance = lorentz.pairwise_dist(x, y, 1.0)
    assert distance[0, 0] == 0 and distance[1, 1] == 0
    torch.testing.assert_close(distance.double(), lorentz.pairwise_dist(x64, y64, 1.0), rtol=1e-5, atol=2e-4)
    on_the_clamp = torch.zeros(5, 5)
    on_the_clamp[0, 0] = on_the_clamp[1, 1] = 1.0
    grad_x, grad_y = torch.autograd.grad((distance * on_the_clamp).sum(), (x, y))
    assert torch.equal(grad_x, torch.zeros_like(grad_x)) and torch.equal(grad_y, torch.zeros_like(grad_y))
