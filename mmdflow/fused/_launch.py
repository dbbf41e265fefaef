"""Launching the Pallas kernels: static configuration (``_Config`` -> ``_Geom`` tiles),
transposed and padded layouts, ``pallas_call`` (Triton compiler parameters, or interpret mode),
and the jitted launchers of the forward and backward kernels."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mmdflow.fused._bodies import _fwd_body, _gbwd_cols_body, _gbwd_rows_body, _theta_body
from mmdflow.fused._tiles import _Geom
from mmdflow.kernels import DIRECT_MAX_D, HIGHEST

MIN_BLOCK = 16  # Triton's tl.dot needs every dimension >= 16
GEMM_MIN_D = 16  # smallest padded dimension of the GEMM distance form (a tl.dot operand)
GEMM_CHUNK = 64  # coordinates per chunk of the GEMM form (K-loop of x.y; per-program slice)


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static launch configuration (part of the custom_vjp's non-differentiable arguments)."""

    block_rows: int
    block_cols: int
    bwd_rows: int
    bwd_cols: int
    interpret: bool
    num_warps: int
    num_stages: int

    def geom(self, nr: int, nc: int, d: int, bwd: bool = False) -> _Geom:
        """Tiles for ``nr`` rows and ``nc`` columns (no larger than the padded sets)."""
        rows, cols = (self.bwd_rows, self.bwd_cols) if bwd else (self.block_rows, self.block_cols)
        br = min(rows, max(MIN_BLOCK, _next_pow2(nr)))
        bc = min(cols, max(MIN_BLOCK, _next_pow2(nc)))
        direct = d <= DIRECT_MAX_D
        dp = d if direct else _gemm_dim(d)
        dk = dp if direct else min(dp, GEMM_CHUNK)
        return _Geom(br, bc, -(-nc // bc), direct, dk, dp // dk)


def _gemm_dim(d: int) -> int:
    """Padded dimension of the GEMM form: a power of two >= 16, or a multiple of the chunk."""
    if d <= GEMM_CHUNK:
        return max(GEMM_MIN_D, _next_pow2(d))
    return -(-d // GEMM_CHUNK) * GEMM_CHUNK


def _nb(n, b):
    return -(-n // b)


def _layout_pts(x, b, direct):
    """``[n, d]`` points -> transposed ``[d', N]`` (edge-padded points, zero-padded coords) and
    squared norms ``[N]``, ``N`` the next multiple of ``b``."""
    n, d = x.shape
    xt = x.T
    if not direct:
        xt = jnp.pad(xt, ((0, _gemm_dim(d) - d), (0, 0)))
    xt = jnp.pad(xt, ((0, 0), (0, _nb(n, b) * b - n)), mode="edge")
    return xt, jnp.sum(xt * xt, axis=0)


def _layout_vecs(h, b, direct):
    """``[n, k, d]`` per-point vectors -> ``[k, d', N]`` (zero-padded)."""
    n, _, d = h.shape
    ht = jnp.transpose(h, (1, 2, 0))
    dpad = 0 if direct else _gemm_dim(d) - d
    return jnp.pad(ht, ((0, 0), (0, dpad), (0, _nb(n, b) * b - n)))


def _layout_w(w, b):
    """``[n, k]`` per-point weights -> ``[k, N]`` (zero-padded)."""
    return jnp.pad(w.T, ((0, 0), (0, _nb(w.shape[0], b) * b - w.shape[0])))


def _call(body, cfg, grid, out_shapes, name, *args):
    from jax.experimental.pallas import triton as plgpu

    return pl.pallas_call(
        body,
        out_shape=out_shapes,
        grid=grid,
        interpret=cfg.interpret,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        name=name,
    )(*args)


@functools.partial(jax.jit, static_argnums=(0, 1, 6))
def _fwd(spec, cfg, params, x, y, w, grad):
    """Forward kernel sums ``[n, k]`` (value) or ``[n, k, d]`` (gradient)."""
    n, d = x.shape
    m, kk = w.shape
    g = cfg.geom(n, m, d)
    xt, xn = _layout_pts(x, g.br, g.direct)
    yt, yn = _layout_pts(y, g.bc, g.direct)
    wt = _layout_w(w, g.bc)
    nr = xt.shape[1]
    shape = (kk, xt.shape[0], nr) if grad else (kk, nr)
    grid = (nr // g.br, g.nck if grad else 1)
    body = functools.partial(_fwd_body, spec=spec, g=g, grad=grad)
    name = "mmdflow_grad_matvec" if grad else "mmdflow_matvec"
    out_shape = jax.ShapeDtypeStruct(shape, x.dtype)
    out = _call(body, cfg, grid, out_shape, name, params, xt, xn, yt, yn, wt)
    if grad:
        return jnp.transpose(out[:, :d, :n], (2, 0, 1))
    return out[:, :n].T


@functools.partial(jax.jit, static_argnums=(0, 1))
def _theta_matvec(spec, cfg, params, x, y, gc, w):
    """``d/dp sum_ic g_ic sum_j w_jc phi_p(s_ij)`` -> ``[num_params + 1]`` (last entry 0)."""
    n, d = x.shape
    g = cfg.geom(n, y.shape[0], d, bwd=True)
    xt, xn = _layout_pts(x, g.br, g.direct)
    yt, yn = _layout_pts(y, g.bc, g.direct)
    args = (params, xt, xn, yt, yn, _layout_w(gc, g.br), _layout_w(w, g.bc))
    body = functools.partial(_theta_body, spec=spec, g=g)
    shape = jax.ShapeDtypeStruct((spec.num_params, xt.shape[1]), x.dtype)
    out = _call(body, cfg, (xt.shape[1] // g.br, 1), shape, "mmdflow_matvec_theta_bwd", *args)
    return _pad_params(jnp.sum(out[:, :n], axis=1), params)


def _pad_params(dp, params):
    return jnp.concatenate([dp, jnp.zeros((params.shape[0] - dp.shape[0],), dp.dtype)])


@functools.partial(jax.jit, static_argnums=(0, 1, 7))
def _gbwd_rows(spec, cfg, params, x, y, w, h, with_theta):
    n, d = x.shape
    g = cfg.geom(n, y.shape[0], d, bwd=True)
    xt, xn = _layout_pts(x, g.br, g.direct)
    yt, yn = _layout_pts(y, g.bc, g.direct)
    ht = _layout_vecs(h, g.br, g.direct)
    hx = jnp.einsum("kdn,dn->kn", ht, xt, precision=HIGHEST)
    args = (params, xt, xn, yt, yn, _layout_w(w, g.bc), ht, hx)
    nr = xt.shape[1]
    shapes = [jax.ShapeDtypeStruct((xt.shape[0], nr), x.dtype)]
    if with_theta:
        shapes.append(jax.ShapeDtypeStruct((spec.num_params, nr), x.dtype))
    body = functools.partial(_gbwd_rows_body, spec=spec, g=g)
    outs = _call(body, cfg, (nr // g.br, g.nck), shapes, "mmdflow_grad_matvec_bwd_x", *args)
    dx = outs[0][:d, :n].T
    if not with_theta:
        return dx, None
    return dx, _pad_params(2.0 * jnp.sum(outs[1][:, :n], axis=1), params)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _gbwd_cols(spec, cfg, params, x, y, w, h):
    n, d = x.shape
    m, kk = w.shape
    g = cfg.geom(m, n, d, bwd=True)  # rows: y, columns: x
    yt, yn = _layout_pts(y, g.br, g.direct)
    xt, xn = _layout_pts(x, g.bc, g.direct)
    ht = _layout_vecs(h, g.bc, g.direct)
    hx = jnp.einsum("kdn,dn->kn", ht, xt, precision=HIGHEST)
    args = (params, yt, yn, xt, xn, _layout_w(w, g.br), ht, hx)
    nr = yt.shape[1]
    shapes = [
        jax.ShapeDtypeStruct((yt.shape[0], nr), x.dtype),
        jax.ShapeDtypeStruct((kk, nr), x.dtype),
    ]
    body = functools.partial(_gbwd_cols_body, spec=spec, g=g)
    dy, dw = _call(body, cfg, (nr // g.br, g.nck), shapes, "mmdflow_grad_matvec_bwd_y", *args)
    return dy[:d, :m].T, dw[:, :m].T
