"""Fused Pallas kernel sums (``ops.SumConfig("pallas")``), run in interpret mode on CPU.

Values and reverse-mode derivatives (points, weights, kernel hyperparameters) against the
float64 NumPy references of ``_refs`` (hyperparameter derivatives by central differences of
the references), finite differences (``check_grads``) where no closed form is written down,
fp32 accuracy, dispatch rules, and a lowering of every fused op for CUDA (Pallas -> Triton)
through ``jax.export`` -- the GPU check that runs without a GPU.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import case
from _refs import grad_x as ref_grad_x
from _refs import gram as ref_gram
from _refs import mmd2 as ref_mmd2
from jax.test_util import check_grads

import mmdflow
from mmdflow import fused, kernels, ops

RADIAL = ["gaussian", "mixture", "imq", "laplace", "rq", "energy"]
BS = (16, 16)  # small tiles: several programs and loop steps at these sizes
PALLAS = dict(sums=ops.SumConfig("pallas", BS))


def _ref_params(name, leaves):
    """Reference parameters (``_refs`` convention) from the kernel's pytree leaves."""
    v = [float(a) for a in leaves]
    if name == "gaussian" or name == "laplace":
        return {"bw": v[0]}
    if name == "mixture":
        return {"bws": v[:3], "ws": v[3:]}
    if name == "imq":
        return {"c": v[0], "beta": v[1]}
    if name == "rq":
        return {"bw": v[0], "alpha": v[1]}
    return {}


def _fd_params(name, fn, leaves, eps=1e-6):
    """Central differences of ``fn(params) -> array`` w.r.t. each leaf (float64 references)."""
    out = []
    for i in range(len(leaves)):
        up = [float(a) for a in leaves]
        dn = list(up)
        up[i] += eps
        dn[i] -= eps
        out.append((fn(_ref_params(name, up)) - fn(_ref_params(name, dn))) / (2 * eps))
    return out


def _points(rng, n, m, d, kk=None):
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) * 1.1 + 0.3
    w = rng.normal(size=(m,) if kk is None else (m, kk))
    return x, y, w


@pytest.mark.parametrize(
    ("name", "d"),
    [("gaussian", 1), ("mixture", 16), ("laplace", 3), ("rq", 3), ("energy", 16)],
)
def test_values_match_numpy_float64(name, d, rng):
    # n, m not multiples of the tiles; d = 16 is the GEMM distance form (d > DIRECT_MAX_D)
    n, m = 37, 53
    k, p = case(name, d)
    x, y, w3 = _points(rng, n, m, d, kk=3)
    w = w3[:, 0]
    K = ref_gram(name, x, y, p)
    G = ref_grad_x(name, x, y, p)
    got = ops.kernel_matvec(k, x, y, w, **PALLAS)
    assert got.shape == (n,) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, K @ w, rtol=1e-10, atol=1e-10)
    got3 = ops.kernel_grad_matvec(k, x, y, w3, **PALLAS)
    assert got3.shape == (n, 3, d)
    np.testing.assert_allclose(got3, np.einsum("ijd,jc->icd", G, w3), rtol=1e-10, atol=1e-10)


def test_weights_of_several_columns_and_single_points(rng):
    k, p = case("imq", 2)
    x, y, w = _points(rng, 1, 70, 2, kk=2)
    K = ref_gram("imq", x, y, p)
    np.testing.assert_allclose(ops.kernel_matvec(k, x, y, w, **PALLAS), K @ w, rtol=1e-10)
    g = ops.kernel_grad_matvec(k, y, x, w[:1, 0], **PALLAS)  # m = 1
    want = ref_grad_x("imq", y, x, p)[:, 0, :] * w[0, 0]
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)


def _rel(got, want):
    return np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want))


@pytest.mark.parametrize(("d", "shift", "n"), [(3, 50.0, 90), (64, 20.0, 90), (784, 0.0, 40)])
def test_float32_accuracy_vs_float64(d, shift, n, rng):
    """fp32 within 1e-5 (relative to the largest entry) of float64, also far from the origin."""
    m = n + 17
    x = (rng.normal(size=(n, d)) + shift).astype(np.float32)
    y = (rng.normal(size=(m, d)) * 1.1 + shift).astype(np.float32)
    w = rng.uniform(size=(m,)).astype(np.float32)
    bw = float(np.sqrt(d))
    k = kernels.Gaussian(bw)
    p = {"bw": bw}
    mv = ops.kernel_matvec(k, x, y, w, sums=ops.SumConfig("pallas", 32))
    gmv = ops.kernel_grad_matvec(k, x, y, w, sums=ops.SumConfig("pallas", 32))
    assert mv.dtype == jnp.float32 and gmv.dtype == jnp.float32
    w64 = w.astype(np.float64)
    assert _rel(mv, ref_gram("gaussian", x, y, p) @ w64) <= 1e-5
    assert _rel(gmv, np.einsum("ijd,j->id", ref_grad_x("gaussian", x, y, p), w64)) <= 1e-5


def test_bfloat16_inputs_accumulate_in_float32(rng):
    x, y, w = (a.astype(np.float32) for a in _points(rng, 40, 50, 3))
    k = kernels.Gaussian(1.5)
    xb, yb, wb = (jnp.asarray(a, jnp.bfloat16) for a in (x, y, w))
    got = ops.kernel_matvec(k, xb, yb, wb, **PALLAS)
    assert got.dtype == jnp.bfloat16
    want = ref_gram("gaussian", *(np.asarray(a, np.float64) for a in (xb, yb)), {"bw": 1.5})
    want = want @ np.asarray(wb, np.float64)
    assert _rel(got, want) <= 1e-2


@pytest.mark.parametrize(("name", "d"), [*((name, 2) for name in RADIAL), ("gaussian", 70)])
def test_vjp_of_matvec_matches_numpy_float64(name, d, rng):
    """Gradients w.r.t. x, y, w and every kernel hyperparameter (custom_vjp, fused backward)."""
    n = m = 29  # the x- and y-gradient kernel sums share a compilation
    k, _ = case(name, d)
    x, y, w = _points(rng, n, m, d, kk=2)
    g = rng.normal(size=(n, 2))
    leaves, treedef = jax.tree.flatten(k)
    leaves = [jnp.asarray(a, jnp.float64) for a in leaves]

    def f(x, y, w, leaves):
        return ops.kernel_matvec(jax.tree.unflatten(treedef, leaves), x, y, w, **PALLAS)

    out, vjp = jax.vjp(jax.jit(f), x, y, w, leaves)
    dx, dy, dw, dleaves = vjp(jnp.asarray(g))
    p = _ref_params(name, leaves)
    K = ref_gram(name, x, y, p)
    G = ref_grad_x(name, x, y, p)  # [n, m, d]
    v = g @ w.T  # v[i, j] = sum_c g_ic w_jc
    np.testing.assert_allclose(out, K @ w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, np.einsum("ij,ijd->id", v, G), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dy, -np.einsum("ij,ijd->jd", v, G), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dw, K.T @ g, rtol=1e-9, atol=1e-10)
    fd = _fd_params(name, lambda q: np.sum(v * ref_gram(name, x, y, q)), leaves)
    np.testing.assert_allclose(np.array(dleaves), np.array(fd), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("d", [3, 70])  # direct form; GEMM form in two coordinate chunks
def test_check_grads_of_grad_matvec(d, rng):
    """Backward of the gradient sum (fused x- and y-block kernels): finite differences."""
    k = kernels.Gaussian(1.2)
    x, y, w = (jnp.asarray(a) for a in _points(rng, 9, 13, d, kk=2))
    f = jax.jit(lambda x, y, w: ops.kernel_grad_matvec(k, x, y, w, **PALLAS))
    check_grads(f, (x, y, w), order=1, modes=["rev"])


@pytest.mark.parametrize(("name", "d"), [("mixture", 2), ("imq", 2), ("laplace", 2), ("rq", 11)])
def test_hyperparameter_grads_of_grad_matvec(name, d, rng):
    """d/d theta of sum_j w_j grad_x k: fused kernel of d phi' / d theta vs references."""
    n, m = 9, 13
    k, _ = case(name, d)
    x, y, w = (jnp.asarray(a) for a in _points(rng, n, m, d, kk=2))
    leaves, treedef = jax.tree.flatten(k)
    leaves = [jnp.asarray(a, jnp.float64) for a in leaves]
    h = rng.normal(size=(n, 2, d))
    loss = lambda lv: jnp.sum(
        h * ops.kernel_grad_matvec(jax.tree.unflatten(treedef, lv), x, y, w, **PALLAS)
    )
    got = jax.jit(jax.grad(loss))(leaves)
    fn = lambda q: np.sum(h * np.einsum("ijd,jc->icd", ref_grad_x(name, x, y, q), w))
    np.testing.assert_allclose(np.array(got), np.array(_fd_params(name, fn, leaves)), rtol=1e-6)


def test_second_order_reverse_mode_in_points_and_weights(rng):
    x, y, w = (jnp.asarray(a) for a in _points(rng, 9, 13, 3))
    k = kernels.Gaussian(1.3)
    f = jax.jit(lambda x, y, w: ops.kernel_matvec(k, x, y, w, **PALLAS))
    check_grads(f, (x, y, w), order=2, modes=["rev"])


def test_higher_order_through_fused_backward_kernels_raises(rng):
    x, y, w = (jnp.asarray(a) for a in _points(rng, 9, 13, 3))
    k = kernels.Gaussian(1.3)
    gm = lambda x: jnp.sum(ops.kernel_grad_matvec(k, x, y, w, **PALLAS) ** 2)
    with pytest.raises(NotImplementedError, match="impl='blocked'"):
        jax.grad(lambda x: jnp.sum(jax.grad(gm)(x) ** 2))(x)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: ops.kernel_matvec(k, x, y, w, **PALLAS), (x,), (x,))


def test_mmd2_and_witness_grad_with_pallas(rng):
    x, y, _ = _points(rng, 30, 30, 2)  # n = m: the three kernel sums share one compilation
    k, p = case("gaussian", 2)
    kxx, kyy, kxy = (ref_gram("gaussian", a, b, p) for a, b in ((x, x), (y, y), (x, y)))
    a, b = np.full(30, 1 / 30), np.full(30, 1 / 30)
    for est in ("biased", "unbiased"):
        got = mmdflow.mmd2(x, y, k, estimator=est, **PALLAS)
        np.testing.assert_allclose(got, ref_mmd2(kxx, kyy, kxy, a, b, est), rtol=1e-9)
    # d MMD^2 / dx_i = -2 a_i witness_grad(x_i)
    gx = jax.grad(lambda x: mmdflow.mmd2(x, y, k, **PALLAS))(jnp.asarray(x))
    wg = mmdflow.witness_grad(x, x, y, k, **PALLAS)
    want = np.einsum("ijd,j->id", ref_grad_x("gaussian", x, y, p), b) - np.einsum(
        "ijd,j->id", ref_grad_x("gaussian", x, x, p), a
    )
    np.testing.assert_allclose(wg, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gx, -2 * a[:, None] * want, rtol=1e-8, atol=1e-12)
    # in the bandwidth (the fused sums are custom_vjp functions: reverse mode only), against
    # central differences of the NumPy estimate
    pairs = ((x, x), (y, y), (x, y))
    ref = lambda bw: ref_mmd2(
        *(ref_gram("gaussian", u, v, {**p, "bw": bw}) for u, v in pairs), a, b, "biased"
    )
    bw, h = p["bw"], 1e-5
    gb = jax.grad(lambda bw: mmdflow.mmd2(x, y, kernels.Gaussian(bw), **PALLAS))(bw)
    np.testing.assert_allclose(gb, (ref(bw + h) - ref(bw - h)) / (2 * h), rtol=1e-6)


def test_vmap_and_nan_propagation(rng):
    k = kernels.Gaussian(1.0)
    xs = jnp.asarray(rng.normal(size=(3, 10, 2)))
    y = rng.normal(size=(12, 2))
    f = lambda x: ops.kernel_grad_matvec(k, x, y, jnp.ones(12), **PALLAS)
    np.testing.assert_allclose(jax.vmap(f)(xs), np.stack([f(x) for x in xs]), rtol=1e-12)
    y[3, 0] = np.nan
    assert np.all(np.isnan(f(xs[0])))


def test_auto_picks_blocked_off_gpu_and_pallas_on_gpu(monkeypatch):
    g = kernels.Gaussian(1.0)
    assert jax.default_backend() != "gpu"
    assert ops.resolve_impl("auto", 100, 100, g, jnp.float32) == "blocked"
    assert ops.resolve_impl("auto", 100, 100) == "blocked"
    assert ops.resolve_impl("pallas", 100, 100, g, jnp.float32) == "pallas"
    assert fused.default_interpret()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    # off by default until the fused kernels have been validated on a real GPU
    assert ops.resolve_impl("auto", 100, 100, g, jnp.float32) == "blocked"
    monkeypatch.setattr(ops._local, "AUTO_PALLAS_ON_GPU", True)
    assert ops.resolve_impl("auto", 100, 100, g, jnp.float32) == "pallas"
    assert ops.resolve_impl("auto", 100, 100, kernels.MixtureRBF((1.0, 2.0)), jnp.bfloat16) == (
        "pallas"
    )
    assert ops.resolve_impl("auto", 100, 100, g, jnp.float64) == "blocked"
    assert ops.resolve_impl("auto", 100, 100, g + g, jnp.float32) == "blocked"
    assert ops.resolve_impl("auto", 100, 100, kernels.Polynomial(2), jnp.float32) == "blocked"
    monkeypatch.setattr(ops._local, "AUTO_PALLAS_ON_GPU", False)
    assert ops.resolve_impl("auto", 100, 100, g, jnp.float32) == "blocked"


class _Custom(kernels.Kernel):
    def __call__(self, x, y):
        return jnp.exp(-jnp.sum(jnp.abs(x - y)))


@pytest.mark.parametrize(
    "k",
    [
        kernels.Polynomial(2),
        kernels.Linear(),
        kernels.Gaussian(1.0) + kernels.IMQ(1.0),
        2.0 * kernels.Gaussian(1.0),
        _Custom(),
    ],
    ids=["poly", "linear", "sum", "scaled", "custom"],
)
def test_unsupported_kernels_raise_clear_errors(k):
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="impl='pallas'.*impl='blocked'"):
        ops.kernel_matvec(k, x, x, jnp.ones(4), sums=ops.SumConfig("pallas"))
    with pytest.raises(ValueError, match="impl='pallas'"):
        ops.kernel_grad_matvec(k, x, x, jnp.ones(4), sums=ops.SumConfig("pallas"))
    assert not fused.supports(k)
    # "auto" still works (blocked)
    assert ops.kernel_matvec(k, x, x, jnp.ones(4)).shape == (4,)


# ---------------------------------------------------------------- GPU lowering without a GPU
def _export_cuda(f, *args):
    try:
        from jax.experimental.pallas import triton as _  # noqa: F401

        disabled = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    except (ImportError, AttributeError) as e:  # pragma: no cover - old/odd jax builds
        pytest.skip(f"jax.export / Pallas Triton lowering unavailable: {e}")
    exported = jax.export.export(jax.jit(f), platforms=["cuda"], disabled_checks=disabled)(*args)
    return exported.mlir_module()


@pytest.mark.parametrize(
    ("name", "d", "kk"),
    [
        ("gaussian", 3, 1),
        ("mixture", 2, 1),
        ("imq", 1, 2),
        ("rq", 5, 1),
        ("energy", 2, 1),
        ("laplace", 16, 2),
        ("gaussian", 784, 3),
    ],
)
def test_fused_ops_lower_to_triton_for_cuda(name, d, kk):
    """Pallas -> Triton lowering for CUDA (block shapes, ops, dot precision) runs on CPU.

    Every fused kernel (forward, backward in points/weights and in hyperparameters) is lowered
    in float32 at uneven sizes; a failure here is a failure on a GPU.
    """
    k, _ = case(name, d)
    leaves, treedef = jax.tree.flatten(k)
    leaves = [jnp.asarray(a, jnp.float32) for a in leaves]
    n, m = 200, 300
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    y = jax.ShapeDtypeStruct((m, d), jnp.float32)
    w = jax.ShapeDtypeStruct((m, kk), jnp.float32)
    kw = dict(block_size=(64, 32), interpret=False)

    def loss(op):
        return lambda x, y, w, lv: jnp.sum(op(jax.tree.unflatten(treedef, lv), x, y, w, **kw) ** 2)

    fns = {
        "matvec": (lambda x, y, w: fused.kernel_matvec(k, x, y, w, **kw), 1),
        "grad_matvec": (lambda x, y, w: fused.kernel_grad_matvec(k, x, y, w, **kw), 1),
        # fwd + hyperparameters + x, y (gradient sums) + w (matvec); Energy has no parameters
        "vjp_matvec": (jax.grad(loss(fused.kernel_matvec), argnums=(0, 1, 2, 3)), 5),
        # fwd + x/hyperparameter kernel + y/w kernel
        "vjp_grad_matvec": (jax.grad(loss(fused.kernel_grad_matvec), argnums=(0, 1, 2, 3)), 3),
    }
    for fname, (f, calls) in fns.items():
        args = (x, y, w) if fname in ("matvec", "grad_matvec") else (x, y, w, leaves)
        text = _export_cuda(f, *args)
        if name == "energy" and fname == "vjp_matvec":
            calls = 4
        assert text.count("__gpu$xla.gpu.triton") == calls, fname
        assert "mosaic" not in text


@pytest.mark.skipif(
    not os.environ.get("MMDFLOW_TEST_TRITON"),
    reason="opt-in (MMDFLOW_TEST_TRITON=1 with the `triton` package importable): compiles the "
    "lowered Triton IR to a cubin for sm_90 with Triton's own compiler and ptxas, no GPU needed",
)
def test_fused_kernels_compile_with_triton_for_sm90(tmp_path):
    """The Triton IR that the lowering emits goes through Triton's compiler to an H100 cubin."""
    triton = pytest.importorskip("triton")
    from jax._src.pallas.triton import lowering as triton_lowering
    from triton.backends.compiler import GPUTarget

    captured = []
    orig = triton_lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        res = orig(*args, **kwargs)
        captured.append(res.module.operation.get_asm(enable_debug_info=False))
        return res

    triton_lowering.lower_jaxpr_to_triton_module = capture
    try:
        for name, d in (("gaussian", 3), ("laplace", 784)):
            k, _ = case(name, d)
            x = jax.ShapeDtypeStruct((300, d), jnp.float32)
            w = jax.ShapeDtypeStruct((300, 2), jnp.float32)
            loss = lambda x, y, w: jnp.sum(
                fused.kernel_grad_matvec(k, x, y, w, interpret=False) ** 2
            )
            _export_cuda(jax.grad(loss, argnums=(0, 1, 2)), x, x, w)
    finally:
        triton_lowering.lower_jaxpr_to_triton_module = orig
    assert len(captured) == 6  # (forward, backward x, backward y) x 2
    for i, text in enumerate(captured):
        path = tmp_path / f"k{i}.ttir"
        path.write_text(text)
        compiled = triton.compile(str(path), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"]
