"""Fused (Pallas) kernel sums for radial kernels: ``kernel_matvec`` and ``kernel_grad_matvec``.

Flash-attention-style kernels (``jax.experimental.pallas``, Triton backend on GPU): one program
per block of ``block_rows`` points of ``x``; inside it a ``lax.fori_loop`` over blocks of
``block_cols`` points of ``y``, each loaded from memory, with the per-row sums kept in
registers. No ``[n, m]`` array (nor a ``[block, m]`` one) is ever written to memory; a pair
costs one distance and one or two elementwise profile evaluations.

* ``kernel_matvec``: ``out[i, c] = sum_j w[j, c] phi(|x_i - y_j|^2)``.
* ``kernel_grad_matvec``: ``out[i, c, :] = 2 sum_j w[j, c] phi'(|x_i - y_j|^2) (x_i - y_j)``.

Both are ``jax.custom_vjp`` functions whose backward passes are fused kernel sums too:

* the backward of ``kernel_matvec`` w.r.t. ``x``, ``y`` and ``w`` *is* ``kernel_grad_matvec`` /
  ``kernel_matvec`` (with the roles of the sets swapped), so reverse mode of any order in the
  points and weights works;
* the backward of ``kernel_grad_matvec`` (needed by ``jax.grad`` of a witness gradient) uses
  ``phi''`` and two dedicated fused kernels (one per ``x`` block, one per ``y`` block);
* the gradient w.r.t. the kernel's hyperparameters (bandwidths, scales, exponents, mixture
  weights) is a fused kernel sum of ``d phi / d theta`` (or ``d phi' / d theta``), obtained
  inside the kernel body by forward-mode differentiation of the kernel's ``profile`` /
  ``profile_grad``. It is computed only when a hyperparameter is actually differentiated.

Kernels: every :class:`mmdflow.kernels.RadialKernel` whose numeric leaves are scalars
(``Gaussian``, ``IMQ``, ``Laplace``, ``RationalQuadratic``, ``Energy``, and user subclasses whose
``profile`` / ``profile_grad`` are elementwise ``jnp`` functions of the squared distance), plus
``MixtureRBF`` (its ``[L]`` leaves are unrolled into ``L`` Gaussian terms). The kernel's leaves
are packed into one parameter vector that is passed to the Pallas kernel; the kernel object is
rebuilt inside the body with ``jax.tree.unflatten``. ``Sum``, ``Scaled``, dot-product kernels
and other kernels raise ``ValueError`` (``ops`` with ``impl="auto"`` uses the blocked path).

Precision: fp32 and fp64 are computed in their own dtype; bf16/fp16 inputs are computed (and
accumulated) in fp32 and cast back. Up to ``DIRECT_MAX_D`` dimensions squared distances are sums of
squared coordinate differences (exact, no cancellation); above it the points are centred (on the
first point of ``y``: :func:`mmdflow.kernels.centred`), their coordinates zero-padded (to a power of
two ``>= 16``, or to a multiple of ``GEMM_CHUNK`` above it: Triton tiles are powers of two, zero
coordinates do not change distances) and the GEMM form ``|x|^2 + |y|^2 - 2 x.y`` is evaluated with
``precision=HIGHEST`` (IEEE fp32 in Triton, never TF32), ``x.y`` in a loop over coordinate chunks of
``GEMM_CHUNK``, so that no ``[d, block]`` tile is held in registers at large ``d``.
Per-coordinate sums (the gradient sums and their backward passes) give each program one
coordinate chunk of its rows (a second grid axis), so above ``GEMM_CHUNK`` dimensions the
distances are recomputed once per chunk (``ceil(d / GEMM_CHUNK)`` times): the price of never
holding a ``[d, block]`` accumulator. ``n`` and ``m`` need not be multiples of the blocks: rows
are padded (edge values) and dropped, columns are padded with zero weight.

Limitations: forward-mode autodiff (``jax.jvp``, ``jacfwd``, ``hessian``) is not available
through ``custom_vjp`` functions: use ``impl="blocked"`` for it. The dedicated backward kernels
(of ``kernel_grad_matvec`` and of the hyperparameter gradients) are not differentiable again;
differentiating through them raises a ``NotImplementedError`` naming ``impl="blocked"``.

On CPU (or whenever ``interpret=True``) the same kernels run in Pallas interpret mode: exact
but slow, meant for tests. On GPU the Triton backend is selected explicitly
(``jax.experimental.pallas.triton.CompilerParams``).

Architecture (modules of this package; each imports only the ones below it):

* ``__init__``: the public API and its defaults. Checks the inputs, picks the compute dtype,
  centres the points (GEMM form), packs the kernel (``_prepare``), builds the static launch
  configuration (``_config``) and calls one ``custom_vjp`` op.
* ``_vjp``: the ``custom_vjp`` ops ``_matvec`` and ``_gradmv`` and their backward rules.
* ``_launch``: ``_Config`` -> ``_Geom`` tiles, transposed padded layouts, ``pallas_call`` and
  the jitted launchers ``_fwd``, ``_theta_matvec``, ``_gbwd_rows``, ``_gbwd_cols``.
* ``_bodies``: the Pallas kernel bodies, one per launcher.
* ``_tiles``: pair geometry inside a body (``_Block`` of rows, ``_Pairs`` against a block of
  columns: distances, per-coordinate sums and dots, stores).
* ``_spec``: supported kernels, the packed parameter vector (``_Spec``) and the profile
  functions inside a body (``_Profile``).

Call graph (``->``: calls; ``d.``: a cotangent of the backward rule)::

  kernel_matvec ------> _matvec  --fwd--> _fwd(grad=False) ---------> _fwd_body
                           |
                           +--bwd--> d.params: _theta_matvec -------> _theta_body
                                     d.x, d.y: _gradmv (d.y: sets swapped)
                                     d.w:      _matvec (sets swapped)

  kernel_grad_matvec -> _gradmv  --fwd--> _fwd(grad=True) ----------> _fwd_body
                           |
                           +--bwd--> d.x, d.params: _gbwd_rows -----> _gbwd_rows_body
                                     d.y, d.w:      _gbwd_cols -----> _gbwd_cols_body

  each launcher (_launch) pads and transposes its inputs and runs its body (_bodies); a
  body loops over _Pairs (_tiles) of its _Block of rows and evaluates phi, phi', phi''
  and d / d theta on them with _Profile (_spec).

Example:
  >>> import jax.numpy as jnp
  >>> from mmdflow import fused, kernels
  >>> x = jnp.linspace(-1.0, 1.0, 10).reshape(5, 2); y = x[:3] + 0.5; w = jnp.ones(3)
  >>> fused.kernel_matvec(kernels.Gaussian(1.0), x, y, w, block_size=16).shape
  (5,)
  >>> fused.kernel_grad_matvec(kernels.IMQ(1.0), x, y, w, block_size=16).shape
  (5, 2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmdflow._checks import check_block_size, check_sum_inputs
from mmdflow.fused._launch import GEMM_CHUNK, GEMM_MIN_D, MIN_BLOCK, _Config
from mmdflow.fused._spec import _canonical, _spec_and_params, _unsupported_reason
from mmdflow.fused._vjp import _gradmv, _matvec
from mmdflow.kernels import DIRECT_MAX_D, Kernel, centred

__all__ = [
    "kernel_matvec",
    "kernel_grad_matvec",
    "supports",
    "check_supported",
    "default_interpret",
    "DEFAULT_BLOCK_ROWS",
    "DEFAULT_BLOCK_COLS",
    "MIN_BLOCK",
    "MAX_BLOCK",
    "GEMM_MIN_D",
    "GEMM_CHUNK",
    "DEFAULT_BWD_BLOCK",
]

DEFAULT_BLOCK_ROWS = 64  # x points per program (forward kernels)
DEFAULT_BLOCK_COLS = 64  # y points per loop step (forward kernels)
DEFAULT_BWD_BLOCK = 32  # rows and columns of the backward kernels (more live tiles per pair)
MAX_BLOCK = 256
# MIN_BLOCK, GEMM_MIN_D and GEMM_CHUNK live in _launch, with the tile geometry that reads them
_FLOATS_UPCAST = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _prev_pow2(v: int) -> int:
    return 1 << (int(v).bit_length() - 1)


def default_interpret() -> bool:
    """``True`` (Pallas interpret mode) unless the default JAX backend is a GPU."""
    return jax.default_backend() != "gpu"


# ---------------------------------------------------------------- supported kernels
def supports(k: Kernel, dtype=jnp.float32) -> bool:
    """Whether the fused path handles kernel ``k`` for inputs of floating ``dtype``."""
    return _unsupported_reason(k) is None and jnp.issubdtype(dtype, jnp.floating)


def check_supported(k: Kernel) -> None:
    """Raises ``ValueError`` unless the fused path handles ``k``."""
    reason = _unsupported_reason(k)
    if reason is not None:
        raise ValueError(
            f"impl='pallas' supports RadialKernel kernels with scalar hyperparameters "
            f"(Gaussian, IMQ, Laplace, RationalQuadratic, Energy) and MixtureRBF: {reason}. "
            "Use impl='blocked' (or 'auto')."
        )


# ---------------------------------------------------------------- public API
def _compute_dtype(dtype):
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype) in _FLOATS_UPCAST else jnp.dtype(dtype)


def _config(block_size, interpret, num_warps, num_stages) -> _Config:
    if block_size is None:
        fwd = (DEFAULT_BLOCK_ROWS, DEFAULT_BLOCK_COLS)
        bwd = (DEFAULT_BWD_BLOCK, DEFAULT_BWD_BLOCK)
    else:
        fwd = bwd = check_block_size(block_size)
    # powers of two (Triton block shapes) in [MIN_BLOCK, MAX_BLOCK]
    clip = lambda b: _prev_pow2(min(max(b, MIN_BLOCK), MAX_BLOCK))
    interpret = default_interpret() if interpret is None else bool(interpret)
    return _Config(*map(clip, (*fwd, *bwd)), interpret, int(num_warps), int(num_stages))


def _prepare(k, x, y, w):
    check_supported(k)
    x, y, w, dtype = check_sum_inputs(x, y, w)
    cd = _compute_dtype(dtype)
    x, y, w = x.astype(cd), y.astype(cd), w.astype(cd)
    if x.shape[1] > DIRECT_MAX_D:  # GEMM distance form: centre first (translation invariance)
        x, y = centred(x, y)
    spec, params = _spec_and_params(_canonical(k), cd)
    vec = w.ndim == 1
    return spec, params, x, y, (w[:, None] if vec else w), vec, dtype


def kernel_matvec(
    k: Kernel,
    x: jax.Array,
    y: jax.Array,
    w: jax.Array,
    *,
    block_size: int | tuple[int, int] | None = None,
    interpret: bool | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> jax.Array:
    """Fused ``out[i] = sum_j w[j] k(x_i, y_j)`` for a radial kernel ``k``.

    Args:
      k: a supported radial kernel (see :func:`check_supported`).
      x: ``[n, d]`` query points.
      y: ``[m, d]`` source points.
      w: ``[m]`` or ``[m, k]`` weights.
      block_size: ``(rows, cols)`` tile (or one int for both): points of ``x`` per program and
        points of ``y`` per loop step; rounded down to a power of two in
        ``[MIN_BLOCK, MAX_BLOCK]``. ``None``: ``(DEFAULT_BLOCK_ROWS, DEFAULT_BLOCK_COLS)``.
      interpret: Pallas interpret mode; ``None`` means "unless the default backend is a GPU".
      num_warps: Triton warps per program (GPU only).
      num_stages: Triton software-pipelining stages (GPU only).

    Returns:
      ``[n]`` (or ``[n, k]``) in the promoted floating dtype of the inputs.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import fused, kernels
      >>> x = jnp.zeros((3, 2)); y = jnp.ones((4, 2))
      >>> out = fused.kernel_matvec(kernels.Gaussian(1.0), x, y, jnp.ones(4), interpret=True)
      >>> bool(jnp.allclose(out, 4 * jnp.exp(-1.0)))
      True
    """
    spec, params, x, y, w, vec, dtype = _prepare(k, x, y, w)
    cfg = _config(block_size, interpret, num_warps, num_stages)
    out = _matvec(spec, cfg, params, x, y, w).astype(dtype)
    return out[:, 0] if vec else out


def kernel_grad_matvec(
    k: Kernel,
    x: jax.Array,
    y: jax.Array,
    w: jax.Array,
    *,
    block_size: int | tuple[int, int] | None = None,
    interpret: bool | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> jax.Array:
    """Fused ``out[i] = sum_j w[j] grad_x k(x_i, y_j)`` for a radial kernel ``k``.

    Args:
      k: a supported radial kernel (see :func:`check_supported`).
      x: ``[n, d]`` points where gradients are taken.
      y: ``[m, d]`` source points.
      w: ``[m]`` or ``[m, k]`` weights.
      block_size: tile, as in :func:`kernel_matvec`.
      interpret: Pallas interpret mode; ``None`` means "unless the default backend is a GPU".
      num_warps: Triton warps per program (GPU only).
      num_stages: Triton software-pipelining stages (GPU only).

    Returns:
      ``[n, d]`` (or ``[n, k, d]`` for ``[m, k]`` weights).

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import fused, kernels
      >>> x = jnp.zeros((3, 2)); y = jnp.ones((4, 2))
      >>> g = fused.kernel_grad_matvec(kernels.Gaussian(1.0), x, y, jnp.ones(4), interpret=True)
      >>> bool(jnp.allclose(g, 4 * jnp.exp(-1.0)))  # sum_j k(x, y_j) (y_j - x)
      True
    """
    spec, params, x, y, w, vec, dtype = _prepare(k, x, y, w)
    cfg = _config(block_size, interpret, num_warps, num_stages)
    out = _gradmv(spec, cfg, params, x, y, w).astype(dtype)
    return out[:, 0, :] if vec else out
