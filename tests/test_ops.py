"""Kernel sums: dense and blocked paths vs float64 NumPy, fp32 accuracy, gradients, memory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import NAMES, case
from _refs import grad_x as ref_grad_x
from _refs import gram as ref_gram
from jax.test_util import check_grads

import mmdflow
from mmdflow import kernels, ops


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl", ["dense", "blocked"])
@pytest.mark.parametrize("d", [2, 11])
def test_matvec_and_grad_matvec_match_numpy_float64(name, impl, d, rng):
    # n, m not multiples of the block size; rectangular blocks
    n, m = 37, 53
    k, p = case(name, d)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + 0.3
    w = rng.normal(size=(m,))
    w3 = rng.normal(size=(m, 3))
    kw = dict(sums=ops.SumConfig(impl, (16, 10)))
    K = ref_gram(name, x, y, p)
    G = ref_grad_x(name, x, y, p)
    np.testing.assert_allclose(ops.kernel_matvec(k, x, y, w, **kw), K @ w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ops.kernel_matvec(k, x, y, w3, **kw), K @ w3, rtol=1e-10, atol=1e-10)
    got = ops.kernel_grad_matvec(k, x, y, w, **kw)
    assert got.shape == (n, d)
    np.testing.assert_allclose(got, np.einsum("ijd,j->id", G, w), rtol=1e-10, atol=1e-10)
    got3 = ops.kernel_grad_matvec(k, x, y, w3, **kw)
    assert got3.shape == (n, 3, d)
    np.testing.assert_allclose(got3, np.einsum("ijd,jc->icd", G, w3), rtol=1e-10, atol=1e-10)
    v3, got3 = ops.kernel_value_and_grad_matvec(k, x, y, w3, **kw)
    np.testing.assert_allclose(v3, K @ w3, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got3, np.einsum("ijd,jc->icd", G, w3), rtol=1e-10, atol=1e-10)


def _rel(got, want):
    return np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want))


@pytest.mark.parametrize("impl", ["dense", "blocked"])
@pytest.mark.parametrize(("d", "shift"), [(2, 0.0), (3, 50.0), (64, 0.0), (64, 20.0)])
def test_float32_accuracy_vs_float64(impl, d, shift, rng):
    """fp32 results are within 1e-5 (relative to the largest entry) of float64."""
    n, m = 300, 400
    x = (rng.normal(size=(n, d)) + shift).astype(np.float32)
    y = (rng.normal(size=(m, d)) * 1.1 + shift).astype(np.float32)
    w = rng.uniform(size=(m,)).astype(np.float32)
    bw = float(np.sqrt(d))
    k = kernels.Gaussian(bw)
    p = {"bw": bw}
    K = ref_gram("gaussian", x, y, p)
    G = np.einsum("ijd,j->id", ref_grad_x("gaussian", x, y, p), w.astype(np.float64))
    mv = ops.kernel_matvec(k, x, y, w, sums=ops.SumConfig(impl, 128))
    gmv = ops.kernel_grad_matvec(k, x, y, w, sums=ops.SumConfig(impl, 128))
    assert mv.dtype == jnp.float32 and gmv.dtype == jnp.float32
    assert _rel(mv, K @ w.astype(np.float64)) <= 1e-5
    assert _rel(gmv, G) <= 1e-5


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_check_grads_of_kernel_sums(impl, rng):
    x = jnp.asarray(rng.normal(size=(9, 3)))
    y = jnp.asarray(rng.normal(size=(13, 3)))
    w = jnp.asarray(rng.normal(size=(13,)))
    # 2 x 2 tiles, both padded (fewer unrolled tiles keep the second-order programs small)
    kw = dict(sums=ops.SumConfig(impl, (5, 7)))
    for k, order in ((kernels.Gaussian(1.3), 2), (kernels.Polynomial(2), 1)):
        check_grads(
            jax.jit(lambda x, y, w: ops.kernel_matvec(k, x, y, w, **kw)), (x, y, w), order=order
        )
        check_grads(
            jax.jit(lambda x, y, w: ops.kernel_grad_matvec(k, x, y, w, **kw)),
            (x, y, w),
            order=1,
            modes=["rev"],
        )
    # kernel hyperparameters
    check_grads(
        jax.jit(
            lambda bw, c: ops.kernel_matvec(kernels.Gaussian(bw) + kernels.IMQ(c), x, y, w, **kw)
        ),
        (1.1, 0.7),
        order=1,
    )


def test_blocked_equals_dense_on_random_shapes(rng):
    k = kernels.Gaussian(1.0)
    for _ in range(4):
        n, m, d = rng.integers(1, 70), rng.integers(1, 70), rng.integers(1, 6)
        bs = (int(rng.integers(1, 33)), int(rng.integers(1, 33)))
        x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
        w = rng.normal(size=(m,))
        # both in one jitted program: one compilation per random shape (CI time)
        dense, blocked = jax.jit(
            lambda x, y, w, bs=bs: (
                ops.kernel_grad_matvec(k, x, y, w, sums=ops.SumConfig("dense")),
                ops.kernel_grad_matvec(k, x, y, w, sums=ops.SumConfig("blocked", bs)),
            )
        )(x, y, w)
        np.testing.assert_allclose(blocked, dense, rtol=1e-10, atol=1e-12)


def test_vmap_over_batches_of_point_sets(rng):
    k = kernels.Gaussian(1.0)
    xs = jnp.asarray(rng.normal(size=(4, 10, 2)))
    y = jnp.asarray(rng.normal(size=(12, 2)))
    w = jnp.ones(12)
    f = lambda x: ops.kernel_grad_matvec(k, x, y, w, sums=ops.SumConfig("blocked", 5))
    np.testing.assert_allclose(jax.vmap(f)(xs), np.stack([f(x) for x in xs]), rtol=1e-12)


def test_nan_inputs_propagate(rng):
    x = rng.normal(size=(10, 2))
    y = rng.normal(size=(10, 2))
    y[3, 0] = np.nan
    for impl in ("dense", "blocked"):
        for k in (kernels.Gaussian(1.0), kernels.Energy(), kernels.Laplace(1.0)):
            out = ops.kernel_grad_matvec(k, x, y, np.ones(10), sums=ops.SumConfig(impl, 4))
            assert np.all(np.isnan(out)), (impl, k)
            assert np.all(
                np.isnan(ops.kernel_matvec(k, x, y, np.ones(10), sums=ops.SumConfig(impl)))
            )


def test_blocked_memory_at_100k_points_forward_and_reverse():
    """XLA's compiled memory analysis: far below the n*m*4 bytes a dense matrix needs."""
    n = m = 100_000
    dense_bytes = n * m * 4
    spec = jax.ShapeDtypeStruct((n, 2), jnp.float32)
    k = kernels.Gaussian(1.0)
    fns = {
        "grad_matvec": lambda x, y: ops.kernel_grad_matvec(
            k, x, y, jnp.ones(m), sums=ops.SumConfig("blocked")
        ),
        "mmd2": lambda x, y: mmdflow.mmd2(x, y, k, sums=ops.SumConfig("blocked")),
        "grad_mmd2": jax.grad(
            lambda x, y: mmdflow.mmd2(x, y, k, sums=ops.SumConfig("blocked")), argnums=(0, 1)
        ),
        "grad_witness_grad": jax.grad(
            lambda x, y: jnp.sum(
                mmdflow.witness_grad(x, x, y, k, sums=ops.SumConfig("blocked")) ** 2
            )
        ),
    }
    for name, f in fns.items():
        mem = jax.jit(f).lower(spec, spec).compile().memory_analysis()
        assert mem is not None
        assert mem.temp_size_in_bytes < dense_bytes / 200, (name, mem.temp_size_in_bytes)


def test_auto_picks_the_memory_safe_blocked_path():
    assert ops.resolve_impl("auto", 100, 100) == "blocked"
    assert ops.resolve_impl("auto", 100_000, 100_000) == "blocked"
    with pytest.raises(ValueError, match="impl"):
        ops.resolve_impl("fast", 1, 1)


def test_jit_grad_of_blocked_mmd_does_not_crash_subprocess():
    """Regression: XLA:CPU segfaulted on jit(grad) of single-tile blocked sums (run isolated)."""
    import subprocess
    import sys

    code = """
import jax, jax.numpy as jnp
from mmdflow import kernels, ops
for n, m, bs in [(64, 64, 64), (64, 64, 1024), (64, 100, 64), (100, 64, 64), (33, 65, 32)]:
    x = jax.random.normal(jax.random.key(0), (n, 2)); y = jax.random.normal(jax.random.key(1), (m, 2))
    a = jnp.full(n, 1.0 / n); b = jnp.full(m, 1.0 / m); k = kernels.Gaussian(2.0)
    mv = lambda p, q, w: ops.kernel_matvec(k, p, q, w, sums=ops.SumConfig("blocked", bs))
    g = jax.jit(jax.grad(lambda x: a @ mv(x, x, a) - 2 * a @ mv(x, y, b)))(x)
    assert bool(jnp.all(jnp.isfinite(g)))
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "ok" in res.stdout


def test_default_tiles_on_cpu(monkeypatch):
    # on CPU the default block_size means tiles of about CPU_TILE_PAIRS pairs, CPU_TILE_COLS
    # wide for up to CPU_UNROLL_COL_BLOCKS column blocks, wider beyond, for the
    # direct-difference distance; 512 x 1024 otherwise
    assert jax.default_backend() == "cpu"
    monkeypatch.setattr(ops._local, "CPU_TILE_PAIRS", 2**21)
    monkeypatch.setattr(ops._local, "CPU_TILE_COLS", 2**14)
    monkeypatch.setattr(ops._local, "CPU_UNROLL_COL_BLOCKS", 4)
    assert ops.default_tiles(2, 10**6, 10**6) == (8, 250_000)  # 4 column blocks
    assert ops.default_tiles(2, 10**6, 65_536) == (128, 16_384)
    assert ops.default_tiles(3, 10**6, 2048) == (1024, 2048)
    assert ops.default_tiles(kernels.DIRECT_MAX_D, 1000, 900) == (1000, 900)  # one tile
    assert ops.default_tiles(3, 10**6, 2**24) == (1, 2**22)
    # the GEMM distance form: CPU_GEMM_TILE_ROWS x DEFAULT_BLOCK_SIZE (clipped to n, m later)
    assert ops.default_tiles(kernels.DIRECT_MAX_D + 1, 10**6, 10**6) == (512, 1024)


@pytest.mark.parametrize("m", [200, 517, 1100])  # column blocks: 1 (one loop), 3, 4 wide
def test_default_tiles_sums_with_several_blocks(rng, monkeypatch, m):
    # the sums over the default tiles (several row blocks, rows and columns padded) equal
    # the float64 NumPy reference, forward and in reverse mode; small tile constants (read at
    # trace time) stand for the large ones
    monkeypatch.setattr(ops._local, "CPU_TILE_PAIRS", 64 * 256)
    monkeypatch.setattr(ops._local, "CPU_TILE_COLS", 256)
    monkeypatch.setattr(ops._local, "CPU_UNROLL_COL_BLOCKS", 4)
    n = 150
    bx, by = ops.default_tiles(3, n, m)
    want_blocks = {200: (2, 1), 517: (3, 3), 1100: (3, 4)}[m]
    assert (math.ceil(n / bx), math.ceil(m / by)) == want_blocks
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    w = rng.normal(size=(m,))
    k = kernels.Gaussian(1.1)
    diff = x[:, None, :] - y[None, :, :]
    kxy = np.exp(-np.sum(diff**2, -1) / (2 * 1.1**2))
    np.testing.assert_allclose(
        ops.kernel_matvec(k, x, y, w, sums=ops.SumConfig("blocked")), kxy @ w, rtol=1e-10
    )
    want = np.einsum("ij,j,ijd->id", kxy, w, -diff) / 1.1**2
    got = ops.kernel_grad_matvec(k, x, y, w, sums=ops.SumConfig("blocked"))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # reverse mode: d/dx sum_i a_i (K w)_i = sum_j a_i w_j grad_x k(x_i, y_j)
    a = rng.normal(size=(n,))
    g = jax.jit(
        jax.grad(lambda p: a @ ops.kernel_matvec(k, p, y, w, sums=ops.SumConfig("blocked")))
    )(x)
    np.testing.assert_allclose(g, a[:, None] * want, rtol=1e-9, atol=1e-12)


def test_blocked_result_type_follows_the_tile_with_several_blocks():
    # float32 points, float64 kernel parameter (x64 on): every path returns the same dtype
    x = jnp.asarray(np.random.default_rng(0).normal(size=(37, 2)), jnp.float32)
    k = kernels.Gaussian(jnp.float64(1.3))
    w = jnp.ones(37, jnp.float32)
    dense = ops.kernel_matvec(k, x, x, w, sums=ops.SumConfig("dense"))
    for bs in (8, (8, 16), 64):
        out = ops.kernel_matvec(k, x, x, w, sums=ops.SumConfig("blocked", bs))
        assert out.dtype == dense.dtype, bs
        np.testing.assert_allclose(out, dense, rtol=1e-6)
