"""The ``custom_vjp`` ops ``_matvec`` (value sums) and ``_gradmv`` (gradient sums).

Their backward passes are fused kernel sums again (``_matvec`` / ``_gradmv`` with the roles of
the sets swapped) or the dedicated backward kernels, which are marked not differentiable again.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmdflow.fused._launch import _fwd, _gbwd_cols, _gbwd_rows, _theta_matvec
from mmdflow.kernels import HIGHEST


def _no_higher_order(f):
    """Marks the output of a dedicated backward kernel as not differentiable (clear error)."""

    @jax.custom_jvp
    def g(*args):
        return f(*args)

    @g.defjvp
    def _jvp(primals, tangents):
        raise NotImplementedError(
            "mmdflow.fused (impl='pallas'): this derivative would differentiate a fused backward "
            "kernel (of kernel_grad_matvec, or of a kernel hyperparameter gradient) again; it is "
            "not supported. Use impl='blocked' for higher-order derivatives."
        )

    return g


def _val(p):
    return p.value


def _perturbed(p):
    return p.perturbed


def _is_zero(ct):
    return isinstance(ct, jax.custom_derivatives.SymbolicZero)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _matvec(spec, cfg, params, x, y, w):
    return _fwd(spec, cfg, params, x, y, w, grad=False)


def _residuals(*args):
    """Primal values and which of them are differentiated (``symbolic_zeros`` inputs)."""
    return tuple(map(_val, args)), tuple(map(_perturbed, args))


def _matvec_fwd(spec, cfg, params, x, y, w):
    vals, flags = _residuals(params, x, y, w)
    # the custom_vjp function itself (not the raw kernel), so that the primal output stays
    # differentiable by its own rule under an outer transformation (second-order reverse mode)
    return _matvec(spec, cfg, *vals), (vals, flags)


def _matvec_bwd(spec, cfg, res, g):
    (params, x, y, w), (dparams_on, dx_on, dy_on, dw_on) = res
    if _is_zero(g):
        return None, None, None, None
    dparams = dx = dy = dw = None
    if dparams_on:
        dparams = _no_higher_order(functools.partial(_theta_matvec, spec, cfg))(params, x, y, g, w)
    if dx_on:  # sum_c g_ic sum_j w_jc grad_x k(x_i, y_j)
        dx = jnp.einsum("ic,icd->id", g, _gradmv(spec, cfg, params, x, y, w), precision=HIGHEST)
    if dy_on:  # sum_c w_jc sum_i g_ic grad_y k(x_i, y_j); grad_y k(x, y) = grad_1 k(y, x)
        dy = jnp.einsum("jc,jcd->jd", w, _gradmv(spec, cfg, params, y, x, g), precision=HIGHEST)
    if dw_on:
        dw = _matvec(spec, cfg, params, y, x, g)
    return dparams, dx, dy, dw


_matvec.defvjp(_matvec_fwd, _matvec_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gradmv(spec, cfg, params, x, y, w):
    return _fwd(spec, cfg, params, x, y, w, grad=True)


def _gradmv_fwd(spec, cfg, params, x, y, w):
    vals, flags = _residuals(params, x, y, w)
    return _gradmv(spec, cfg, *vals), (vals, flags)


def _gradmv_bwd(spec, cfg, res, h):
    (params, x, y, w), (dparams_on, dx_on, dy_on, dw_on) = res
    if _is_zero(h):
        return None, None, None, None
    dparams = dx = dy = dw = None
    if dx_on or dparams_on:
        rows = _no_higher_order(lambda *a: _gbwd_rows(spec, cfg, *a, with_theta=bool(dparams_on)))
        dx, dparams = rows(params, x, y, w, h)
        dx = dx if dx_on else None
    if dy_on or dw_on:
        cols = _no_higher_order(functools.partial(_gbwd_cols, spec, cfg))
        dy, dw = cols(params, x, y, w, h)
        dy, dw = (dy if dy_on else None), (dw if dw_on else None)
    return dparams, dx, dy, dw


_gradmv.defvjp(_gradmv_fwd, _gradmv_bwd, symbolic_zeros=True)
