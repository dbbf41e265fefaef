"""Coincident points at every dimension: the GEMM distance form (d > DIRECT_MAX_D) gives exact
zeros there, so kernels with a cusp (Laplace, Energy) match float64 NumPy on every path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import case
from _refs import cross_hess as ref_cross_hess
from _refs import grad_x as ref_grad_x
from _refs import gram as ref_gram
from _refs import mmd2 as ref_mmd2
from jax.test_util import check_grads

import mmdflow
from mmdflow import kernels, ops

CASES = {
    "laplace": (kernels.Laplace(1.1), {"bw": 1.1}),
    "energy": (kernels.Energy(), {}),
}
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _points(d, seed=0):
    """``y [12, d]`` off the origin; ``x [13, d]`` holds 6 of them, 2 twice, and 5 others."""
    r = np.random.default_rng(seed)
    y = r.normal(size=(12, d)) + 2.0
    x = np.concatenate([y[:6], y[:2], r.normal(size=(5, d)) + 2.0])
    return x, y, r.uniform(0.5, 1.5, size=12), r.uniform(0.5, 1.5, size=13)


def _close(got, want, dtype, what):
    tol = TOL[dtype]
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=what)


# just above the GEMM threshold (9), mid (64) and large d (300) (d <= 8: direct differences,
# covered in test_ops);
# each case compiles every op on three paths, so the grid is sparse (CI time), not a product
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("name", "d"),
    [("laplace", 9), ("laplace", 300), ("energy", 64), ("gaussian", 300)],
)
def test_coincident_points_match_numpy_float64_at_every_d(name, d, dtype):
    # a bandwidth growing with d keeps Gaussian values inside float32's range
    k, p = CASES[name] if name != "gaussian" else (kernels.Gaussian(d**0.5), {"bw": d**0.5})
    x, y, w, wx = _points(d)
    xs, ys, ws, wxs = (a.astype(dtype) for a in (x, y, w, wx))
    kxy = ref_gram(name, x, y, p)
    gxy = np.einsum("ijd,j->id", ref_grad_x(name, x, y, p), w)
    # the block form behind the blocked path (direct differences up to d = 8, GEMM above)
    _close(k.gram_block(jnp.asarray(xs), jnp.asarray(ys)), kxy, dtype, "gram_block")
    _close(ops.gram(k, xs, ys), kxy, dtype, "gram")
    a, b = wx / wx.sum(), w / w.sum()
    want_mmd2 = ref_mmd2(ref_gram(name, x, x, p), ref_gram(name, y, y, p), kxy, a, b, "biased")
    want_wg = np.einsum("ijd,j->id", ref_grad_x(name, x, y, p), b) - np.einsum(
        "ijd,j->id", ref_grad_x(name, x, x, p), a
    )
    for impl in ("dense", "blocked", "pallas"):
        cfg = ops.SumConfig(impl, (8, 8) if impl == "blocked" else None)  # several tiles, padding

        # the four ops in one jitted program: one compilation per path instead of four
        # (CI time; each op's result is still checked on its own)
        @jax.jit
        def sums(xs, ys, ws, wxs, cfg=cfg):
            return (
                ops.kernel_matvec(k, xs, ys, ws, sums=cfg),
                ops.kernel_grad_matvec(k, xs, ys, ws, sums=cfg),
                mmdflow.mmd2(xs, ys, k, wx=wxs, wy=ws, sums=cfg),
                mmdflow.witness_grad(xs, xs, ys, k, wx=wxs, wy=ws, sums=cfg),
            )

        mv, gmv, got, wg = sums(xs, ys, ws, wxs)
        _close(mv, kxy @ w, dtype, impl)
        _close(gmv, gxy, dtype, impl)
        # MMD^2 is a difference of O(1) sums: compare on the scale of those sums
        np.testing.assert_allclose(
            float(got), want_mmd2, rtol=0, atol=TOL[dtype] * np.abs(kxy).max(), err_msg=impl
        )
        _close(wg, want_wg, dtype, impl)


@pytest.mark.parametrize("d", [9, 64, 300])
def test_gemm_distances_are_exactly_zero_for_coincident_points(d):
    x, y, _, _ = _points(d)
    for dtype in (np.float32, np.float64):
        s = np.asarray(kernels.sqdist(jnp.asarray(x, dtype), jnp.asarray(y, dtype)))
        assert np.all(s[np.arange(6), np.arange(6)] == 0) and np.all(s[[6, 7], [0, 1]] == 0)
        off = np.ones_like(s, bool)
        off[np.arange(6), np.arange(6)] = off[6, 0] = off[7, 1] = False
        ref = ((x[:, None] - y[None]) ** 2).sum(-1)
        np.testing.assert_allclose(s[off], ref[off], rtol=1e-4 if dtype == np.float32 else 1e-12)


# smooth kernels: d = 2 (direct differences) and 12 (GEMM distance form)
@pytest.mark.parametrize(
    ("k", "d"), [(kernels.Gaussian(1.3), 2), (kernels.IMQ(1.2, beta=-0.7), 12)], ids=["2", "12"]
)
def test_check_grads_of_gradient_sums_at_coincident_points(k, d):
    """Derivatives of the gradient sums where points coincide (``s = 0``): a smooth kernel's
    pair contributes ``2 phi'(0) (dz_i - dy_j)`` there (a mask on ``phi'`` at ``s == 0`` would
    drop it)."""
    r = np.random.default_rng(1)
    x = r.normal(size=(4, d))
    y = r.normal(size=(5, d))
    y[1], y[3] = x[0], x[2]  # x and y share two points
    z = np.concatenate([x[:2], y[4:], r.normal(size=(1, d))])  # z on x and on y
    w = r.normal(size=(5,))
    wg = lambda z, x, y: mmdflow.witness_grad(z, x, y, k)
    check_grads(wg, (z, x, y), order=2, modes=["fwd", "rev"])
    gmv = lambda x, y, w: ops.kernel_grad_matvec(k, x, y, w)
    check_grads(gmv, (x, y, w), order=2, modes=["fwd", "rev"])


def _central(f, a, t, h=1e-3):
    """Central difference of ``f`` at ``a`` along ``t``, Richardson-extrapolated (``O(h^4)``)."""
    cd = lambda step: (f(a + step * t) - f(a - step * t)) / (2 * step)
    return (4 * cd(h / 2) - cd(h)) / 3


# d = 2 and 5: GEMM form, direct distances; 12: GEMM form, GEMM distances (d > DIRECT_MAX_D);
# a sparse grid (CI time)
@pytest.mark.parametrize(("name", "d"), [("imq", 2), ("gaussian", 5), ("imq", 12)])
def test_hessian_matvec_first_derivatives_at_coincident_points(name, d):
    """The cross-Hessian sum (default: blocked) and its first derivatives where points
    coincide (``jvp`` in ``x``, ``y`` and ``e`` each; reverse mode), against central
    differences of the float64 NumPy reference.

    The sum sets ``q = phi''(s) (r . e)`` to 0 where ``s == 0``
    and, above ``DIRECT_MAX_D``, ``s`` to 0 where it is within rounding of 0: neither drops
    a first derivative. At ``r = 0`` the pair's ``-4 q r`` has derivative
    ``-4 (dq r + q dr) = 0``, and its ``-2 phi'(s) e`` has ``-2 phi''(0) (2 r . dr) e -
    2 phi'(0) de = -2 phi'(0) de``, which both masks keep. (They do drop the pair's second
    derivatives ``-8 phi''(0) (dr . e) dr`` and, above ``DIRECT_MAX_D``,
    ``-4 phi''(0) |dr|^2 e``.)
    """
    k, p = case(name, d)
    r = np.random.default_rng(2)
    x = r.normal(size=(6, d)) + 2.0
    y = r.normal(size=(5, d)) + 2.0
    y[1], y[3], y[4] = x[2], x[0], x[5]  # coincident pairs
    e = r.normal(size=(5, d))
    c = r.normal(size=(6, d))
    args = (x, y, e)
    tangents = [r.normal(size=a.shape) for a in args]

    @jax.jit
    def derivs(*args):
        f = lambda *a: ops.kernel_hessian_matvec(k, *a)
        jvps = [
            jax.jvp(lambda a, i=i: f(*args[:i], a, *args[i + 1 :]), (args[i],), (t,))[1]
            for i, t in enumerate(tangents)
        ]
        return f(*args), *jvps, *jax.grad(lambda *a: jnp.vdot(c, f(*a)), argnums=(0, 1, 2))(*args)

    def ref(i, a):  # the reference sum with argument i replaced by a
        x, y, e = (a if j == i else b for j, b in enumerate(args))
        return np.einsum("ijab,jb->ia", ref_cross_hess(name, x, y, p), e)

    want = [ref(0, x)]
    want += [_central(functools.partial(ref, i), args[i], t) for i, t in enumerate(tangents)]
    for i, a in enumerate(args):  # the gradient of vdot(c, sum), coordinate by coordinate
        cref = lambda b, i=i: np.vdot(c, ref(i, b))
        grad = [_central(cref, a, t.reshape(a.shape)) for t in np.eye(a.size)]
        want.append(np.reshape(grad, a.shape))
    labels = ("value", "jvp x", "jvp y", "jvp e", "grad x", "grad y", "grad e")
    for label, g, w in zip(labels, derivs(*args), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10, err_msg=label)
