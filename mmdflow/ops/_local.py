"""One-device kernel sums: the dense reference, the blocked path and the fused dispatch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from mmdflow import fused
from mmdflow._checks import check_block_size, check_points, check_sum_inputs
from mmdflow.kernels import DIRECT_MAX_D, HIGHEST, FeatureKernel, Kernel, centred

IMPLS = ("auto", "dense", "blocked", "pallas")
AUTO_DENSE_MAX_PAIRS = 0  # "auto" uses dense only up to this many pairs
DEFAULT_BLOCK_SIZE = 1024
# "auto" picks the fused path on a GPU backend (supported kernels) when set. Off until the
# fused kernels have run on a real GPU (so far: interpret-mode tests and Triton lowering and
# compilation for sm_90 on CPU only); set it to True, or pass impl="pallas", to use them.
AUTO_PALLAS_ON_GPU = False
#: the blocked path on CPU with the direct-difference distance (``d <= DIRECT_MAX_D``) and the
#: default ``block_size`` (see :func:`default_tiles`): tiles of about ``CPU_TILE_PAIRS`` pairs
#: (8 MB of float32), ``CPU_TILE_COLS`` columns wide while that makes at most
#: ``CPU_UNROLL_COL_BLOCKS`` column blocks, wider beyond.
CPU_TILE_PAIRS = 2**21
CPU_TILE_COLS = 16384
#: the blocked path on CPU with the GEMM distance form (``d > DIRECT_MAX_D``) and the default
#: ``block_size``: tiles of ``CPU_GEMM_TILE_ROWS x DEFAULT_BLOCK_SIZE``. Against 1024 x 1024 on 2
#: cores (``benchmarks/tile_probe.py``, RESULTS.md): 1.1-1.4x faster for 6 of the 8 sums at d = 16
#: (n = 4k, 16k), level at d = 64 (0.96-1.05x, but the 4k matvec 1.18x slower in the quiet run)
CPU_GEMM_TILE_ROWS = 512
#: the Hessian sum on CPU (``kernel_hessian_matvec``, default ``block_size``), whose tile keeps
#: four ``[rows, cols]`` arrays (distances, ``x.e``, two profile derivatives): columns as the
#: other sums' for ``d <= DIRECT_MAX_D``, at most ``CPU_HESS_TILE_COLS`` up to
#: ``CPU_HESS_NARROW_MAX_D`` (the GEMM tiles above), and rows for ``CPU_HESS_TILE_PAIRS`` pairs,
#: at least ``CPU_HESS_TILE_ROWS``. Measured on 2 cores (``tile_probe.py --ops hess``,
#: candidates alternating, quiet; RESULTS.md): at n = 4k, d = 2 / 3 / 16, 1.30x / 1.18x / 1.95x
#: faster than the other sums' tiles, 16k d = 16 1.13x; at d = 64 the GEMM tiles were faster
CPU_HESS_TILE_PAIRS = 2**19
CPU_HESS_TILE_ROWS = 128
CPU_HESS_TILE_COLS = 4096
CPU_HESS_NARROW_MAX_D = 16
#: tiles with a pair budget (``Kernel.grad_tile_pairs``) on CPU: at least this many columns
#: (and at most ``CPU_UNROLL_COL_BLOCKS`` column blocks), at least ``CPU_MIN_TILE_ROWS`` rows
CPU_BUDGET_TILE_COLS = 1024
CPU_MIN_TILE_ROWS = 8
#: on CPU the loop over column blocks is unrolled up to this many blocks (any ``block_size``):
#: XLA:CPU runs a rolled loop of tiles nested in the loop over row blocks 3-5x slower
#: (benchmarks/RESULTS.md)
CPU_UNROLL_COL_BLOCKS = 4
_AUTO_PALLAS_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_kernel(k) -> Kernel:
    if not isinstance(k, Kernel):
        raise ValueError(
            f"`k` must be an mmdflow.kernels.Kernel (e.g. kernels.Gaussian(1.0)); got {type(k).__name__}."
        )
    return k


def resolve_impl(impl: str, n: int, m: int, k: Kernel | None = None, dtype=None) -> str:
    """The implementation ``impl`` stands for: ``"auto"`` resolved, ``"pallas"`` checked.

    ``"auto"`` is ``"pallas"`` only when a kernel ``k`` (and ``dtype``) is given, the default
    backend is a GPU, ``AUTO_PALLAS_ON_GPU`` is set and :func:`mmdflow.fused.supports` them.
    """
    if impl not in IMPLS:
        raise ValueError(f"`impl` must be one of {IMPLS}; got {impl!r}.")
    if impl == "auto":
        if (
            k is not None
            and AUTO_PALLAS_ON_GPU
            and jax.default_backend() == "gpu"
            and jnp.dtype(dtype) in _AUTO_PALLAS_DTYPES
            and fused.supports(k, dtype)
        ):
            return "pallas"
        return "dense" if n * m <= AUTO_DENSE_MAX_PAIRS else "blocked"
    if impl == "pallas" and k is not None:
        fused.check_supported(k)
    return impl


def _prepare(k, x, y, w):
    check_kernel(k)
    x, y, w, dtype = check_sum_inputs(x, y, w)
    x, y, w = x.astype(dtype), y.astype(dtype), w.astype(dtype)
    vec = w.ndim == 1
    return x, y, (w[:, None] if vec else w), vec


def gram(k: Kernel, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """Dense kernel matrix ``K[i, j] = k(x_i, y_j)``.

    Args:
      k: a kernel.
      x: ``[n, d]`` points.
      y: ``[m, d]`` points (default ``x``).

    Returns:
      ``[n, m]`` array.
    """
    check_kernel(k)
    x = check_points("x", x)
    y = x if y is None else check_points("y", y, d=x.shape[1])
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    return jax.vmap(lambda xi: jax.vmap(lambda yj: k(xi, yj))(y))(x)


# ---------------------------------------------------------------- dense reference
def _dense_matvec(k, x, y, w):
    return jnp.matmul(gram(k, x, y), w, precision=HIGHEST)


def _dense_grad_matvec(k, x, y, w):
    def row(xi):
        f = lambda xv: jnp.matmul(jax.vmap(lambda yj: k(xv, yj))(y), w, precision=HIGHEST)
        return jax.jacrev(f)(xi)  # [k, d]

    return jax.vmap(row)(x)


# ---------------------------------------------------------------- blocked path
def default_tiles(
    d: int, n: int, m: int, hessian: bool = False, pairs: int | None = None
) -> tuple[int, int]:
    """The blocked path's tiles for the default ``block_size``: ``n x m`` pairs in ``d`` dims
    (``hessian``: of ``kernel_hessian_matvec``; ``pairs``: a kernel's
    ``grad_tile_pairs``).

    On a CPU backend with the direct-difference distance (``d <= DIRECT_MAX_D``): columns
    ``by = min(m, max(CPU_TILE_COLS, ceil(m / CPU_UNROLL_COL_BLOCKS)))`` and rows
    ``bx = min(n, max(1, CPU_TILE_PAIRS // by))``: tiles of about ``CPU_TILE_PAIRS`` pairs, at
    most ``CPU_UNROLL_COL_BLOCKS`` column blocks (unrolled), a single tile for up to
    ``CPU_TILE_PAIRS`` pairs. Measured on 2 cores (d = 2, n = m = 65,536): 5x faster forward and
    2.3x faster in reverse mode than a rolled loop over 8192-column blocks. On a CPU backend
    with the GEMM distance form, ``CPU_GEMM_TILE_ROWS x DEFAULT_BLOCK_SIZE``; on GPUs
    ``DEFAULT_BLOCK_SIZE`` squared. The Hessian sum on CPU: the same columns for ``d <=
    DIRECT_MAX_D``, at most ``CPU_HESS_TILE_COLS`` for ``d <= CPU_HESS_NARROW_MAX_D`` (the GEMM
    tiles above), and ``max(CPU_HESS_TILE_ROWS, CPU_HESS_TILE_PAIRS // cols)`` rows at most.
    With ``pairs`` on CPU (any ``d``): columns ``min(m, max(CPU_BUDGET_TILE_COLS, ceil(m /
    CPU_UNROLL_COL_BLOCKS)))`` and ``max(CPU_MIN_TILE_ROWS, pairs // cols)`` rows.

    Example:
      >>> from mmdflow import ops
      >>> cpu = jax.default_backend() == "cpu"
      >>> ops.default_tiles(2, 10**5, 10**5) if cpu else (83, 25000)
      (83, 25000)
      >>> ops.default_tiles(16, 10**5, 10**5, hessian=True) if cpu else (128, 4096)
      (128, 4096)
      >>> ops.default_tiles(4, 16384, 16384, pairs=2**17) if cpu else (32, 4096)
      (32, 4096)
    """
    if jax.default_backend() != "cpu":
        return DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE
    if pairs is not None:
        by = min(m, max(CPU_BUDGET_TILE_COLS, -(-m // CPU_UNROLL_COL_BLOCKS)))
        return min(n, max(CPU_MIN_TILE_ROWS, pairs // by)), by
    if d > DIRECT_MAX_D:
        if not (hessian and d <= CPU_HESS_NARROW_MAX_D):
            return CPU_GEMM_TILE_ROWS, DEFAULT_BLOCK_SIZE
        by = min(m, CPU_HESS_TILE_COLS)
        return min(n, max(CPU_HESS_TILE_ROWS, CPU_HESS_TILE_PAIRS // by)), by
    by = min(m, max(CPU_TILE_COLS, -(-m // CPU_UNROLL_COL_BLOCKS)))
    bx = min(n, max(1, CPU_TILE_PAIRS // by))
    if hessian:
        bx = min(bx, max(CPU_HESS_TILE_ROWS, CPU_HESS_TILE_PAIRS // by))
    return bx, by


def _blocked_reduce(tile, x, y, w, block_size, tail, hessian=False, pairs=None):
    """``out[i] = sum_over_column_blocks tile(x_block, y_block, w_block)[i]`` (default tiles:
    :func:`default_tiles`, ``hessian`` for the Hessian sum, ``pairs`` a tile budget).

    ``tile(xb [bx,d], yb [by,d], wb [by,k]) -> [bx, *tail]``. Padded columns carry
    zero weight and replicate a real point (finite kernel values); padded rows
    are dropped.
    """
    n, d = x.shape
    m = w.shape[0]
    if block_size is None:
        bx, by = default_tiles(d, n, m, hessian, pairs)
    else:
        bx, by = check_block_size(block_size)
    bx, by = min(bx, n), min(by, m)
    nbx, nby = math.ceil(n / bx), math.ceil(m / by)
    if nbx == 1 and nby == 1:
        # a single tile: no loops (also sidesteps an XLA:CPU crash seen with
        # jit(grad) of two single-iteration checkpointed map/scan nests)
        return tile(x, y, w)
    xp = jnp.pad(x, ((0, nbx * bx - n), (0, 0)), mode="edge").reshape(nbx, bx, d)
    if nby == 1:
        # one column block: a single loop
        row_block = jax.checkpoint(lambda xb: tile(xb, y, w))
    else:
        row_block = _column_loop(tile, x.dtype, y, w, bx, by, tail)
    return lax.map(row_block, xp).reshape(nbx * bx, *tail)[:n]


def _column_loop(tile, dtype, y, w, bx, by, tail):
    """``xb [bx, d] -> sum over column blocks of tile(xb, y_block, w_block)``, checkpointed.

    A ``lax.scan`` over ``ceil(m / by)`` column blocks (padded columns: zero weight, a
    replicated real point), unrolled on CPU up to ``CPU_UNROLL_COL_BLOCKS`` blocks.
    """
    m, d = y.shape
    kk = w.shape[1]
    nby = math.ceil(m / by)
    yp = jnp.pad(y, ((0, nby * by - m), (0, 0)), mode="edge").reshape(nby, by, d)
    wp = jnp.pad(w, ((0, nby * by - m), (0, 0))).reshape(nby, by, kk)
    # the tile's own result type (e.g. float64 kernel parameters with float32 points under
    # x64), as the single-tile and dense paths return it
    out_dtype = jax.eval_shape(tile, jax.ShapeDtypeStruct((bx, d), dtype), yp[0], wp[0]).dtype
    unroll = nby <= CPU_UNROLL_COL_BLOCKS and jax.default_backend() == "cpu"

    @jax.checkpoint
    def col_step(acc, xb, yb, wb):
        return acc + tile(xb, yb, wb)

    @jax.checkpoint
    def row_block(xb):
        def body(acc, ywb):
            return col_step(acc, xb, *ywb), None

        acc0 = jnp.zeros((bx, *tail), out_dtype)
        acc, _ = lax.scan(body, acc0, (yp, wp), unroll=unroll)
        return acc

    return row_block


def _centre(k, x, y):
    if k.translation_invariant and x.shape[1] > DIRECT_MAX_D:
        return centred(x, y)
    return x, y


def _blocked_matvec(k, x, y, w, block_size):
    x, y = _centre(k, x, y)
    tile = lambda xb, yb, wb: jnp.matmul(k.gram_block(xb, yb), wb, precision=HIGHEST)
    return _blocked_reduce(tile, x, y, w, block_size, (w.shape[1],))


def _blocked_grad_matvec(k, x, y, w, block_size):
    x, y = _centre(k, x, y)
    tail = (w.shape[1], x.shape[1])
    return _blocked_reduce(k.grad_block, x, y, w, block_size, tail, pairs=k.grad_tile_pairs)


def _blocked_value_grad_matvec(k, x, y, w, block_size):
    x, y = _centre(k, x, y)
    tail = (w.shape[1], 1 + x.shape[1])
    out = _blocked_reduce(k.value_grad_block, x, y, w, block_size, tail, pairs=k.grad_tile_pairs)
    return out[..., 0], out[..., 1:]


# ---------------------------------------------------------------- one-device sums
def kernel_matvec(
    k: Kernel,
    x: jax.Array,
    y: jax.Array,
    w: jax.Array,
    *,
    impl: str = "auto",
    block_size: int | tuple[int, int] | None = None,
) -> jax.Array:
    """The one-device ``kernel_matvec`` (:mod:`mmdflow.ops`)."""
    x, y, w, vec = _prepare(k, x, y, w)
    if isinstance(k, FeatureKernel):  # features once per point set, then the base kernel
        fx = k.features(x)
        fy = fx if y is x else k.features(y)
        out = kernel_matvec(k.base, fx, fy, w, impl=impl, block_size=block_size)
        return out[:, 0] if vec else out
    impl = resolve_impl(impl, x.shape[0], y.shape[0], k, x.dtype)
    if impl == "dense":
        out = _dense_matvec(k, x, y, w)
    elif impl == "pallas":
        out = fused.kernel_matvec(k, x, y, w, block_size=block_size)
    else:
        out = _blocked_matvec(k, x, y, w, block_size)
    return out[:, 0] if vec else out


def kernel_grad_matvec(
    k: Kernel,
    x: jax.Array,
    y: jax.Array,
    w: jax.Array,
    *,
    impl: str = "auto",
    block_size: int | tuple[int, int] | None = None,
) -> jax.Array:
    """The one-device ``kernel_grad_matvec`` (:mod:`mmdflow.ops`)."""
    x, y, w, vec = _prepare(k, x, y, w)
    if isinstance(k, FeatureKernel):  # base-kernel gradients of the features, pulled back
        fx, pull = k.linearize(x)
        fy = fx if y is x else k.features(y)
        out = pull(kernel_grad_matvec(k.base, fx, fy, w, impl=impl, block_size=block_size))
        return out[:, 0, :] if vec else out
    impl = resolve_impl(impl, x.shape[0], y.shape[0], k, x.dtype)
    if impl == "dense":
        out = _dense_grad_matvec(k, x, y, w)
    elif impl == "pallas":
        out = fused.kernel_grad_matvec(k, x, y, w, block_size=block_size)
    else:
        out = _blocked_grad_matvec(k, x, y, w, block_size)
    return out[:, 0, :] if vec else out


def kernel_value_and_grad_matvec(
    k: Kernel,
    x: jax.Array,
    y: jax.Array,
    w: jax.Array,
    *,
    impl: str = "auto",
    block_size: int | tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The one-device ``kernel_value_and_grad_matvec`` (:mod:`mmdflow.ops`)."""
    x, y, w, vec = _prepare(k, x, y, w)
    kw = dict(impl=impl, block_size=block_size)
    if isinstance(k, FeatureKernel):  # as kernel_grad_matvec: features once, grads pulled back
        fx, pull = k.linearize(x)
        fy = fx if y is x else k.features(y)
        v, g = kernel_value_and_grad_matvec(k.base, fx, fy, w, **kw)
        g = pull(g)
    elif resolve_impl(impl, x.shape[0], y.shape[0], k, x.dtype) == "blocked":
        v, g = _blocked_value_grad_matvec(k, x, y, w, block_size)
    else:  # the dense reference and the fused kernels: the two sums
        v, g = kernel_matvec(k, x, y, w, **kw), kernel_grad_matvec(k, x, y, w, **kw)
    return (v[:, 0], g[:, 0, :]) if vec else (v, g)


def kernel_hessian_matvec(
    k: Kernel,
    x: jax.Array,
    y: jax.Array,
    e: jax.Array,
    *,
    impl: str = "auto",
    block_size: int | tuple[int, int] | None = None,
) -> jax.Array:
    """The one-device ``kernel_hessian_matvec`` (:mod:`mmdflow.ops`)."""
    check_kernel(k)
    x = check_points("x", x)
    y = check_points("y", y, d=x.shape[1])
    e = check_points("e", e, d=x.shape[1], other="x")
    if e.shape[0] != y.shape[0]:
        raise ValueError(f"`e` must have shape {tuple(y.shape)} like `y`; got {tuple(e.shape)}.")
    dtype = jnp.result_type(x.dtype, y.dtype, e.dtype)
    x, y, e = x.astype(dtype), y.astype(dtype), e.astype(dtype)
    if isinstance(k, FeatureKernel):  # J_phi(x)^T H_base J_phi(y) e: a JVP, the base sum, a VJP
        fx, pull = k.linearize(x)
        fy, t = k.push_forward(y, e)
        return pull(kernel_hessian_matvec(k.base, fx, fy, t, impl=impl, block_size=block_size))
    impl = resolve_impl(impl, x.shape[0], y.shape[0])
    if impl == "dense":
        hess = jax.jacfwd(jax.grad(k, argnums=0), argnums=1)
        h = jax.vmap(lambda xi: jax.vmap(lambda yj: hess(xi, yj))(y))(x)  # [n, m, d, d]
        return jnp.einsum("ijab,jb->ia", h, e, precision=HIGHEST)
    return _blocked_reduce(k.hess_block, x, y, e, block_size, (x.shape[1],), hessian=True)
