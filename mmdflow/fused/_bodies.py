"""Pallas kernel bodies: the forward sums (value and gradient), the hyperparameter sum, and
the two backward kernels of the gradient sum (one per block of ``x`` rows, one per block of
``y`` rows)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mmdflow.fused._spec import _Profile
from mmdflow.fused._tiles import _Block, _store_once, _store_vec, _vadd, _vmul, _vscale, _vzeros


def _fwd_body(p_ref, r_ref, rn_ref, c_ref, cn_ref, w_ref, o_ref, *, spec, g, grad):
    """``o[c, r] = sum_q w[c, q] phi(s_rq)``, or (``grad``)
    ``o[c, :, r] = 2 sum_q w[c, q] phi'(s_rq) (x_r - y_q)``."""
    prof = _Profile(spec, p_ref)
    blk = _Block(r_ref, rn_ref, c_ref, cn_ref, g)
    kk, dt = w_ref.shape[0], o_ref.dtype

    def body(jb, accs):
        pr = blk.pairs(jb)
        ws = [w_ref[c, pl.ds(pr.cs, g.bc)] for c in range(kk)]
        if not grad:
            phi = prof.phi(pr.s)
            return tuple(
                a + jnp.sum(phi * wc[None, :], axis=1) for a, wc in zip(accs, ws, strict=True)
            )
        dphi = prof.dphi(pr.s)
        return tuple(
            _vadd(a, pr.diff_sum(dphi * wc[None, :])) for a, wc in zip(accs, ws, strict=True)
        )

    if grad:
        init = tuple(_vzeros(g, r_ref.shape[0], dt) for _ in range(kk))
    else:
        init = tuple(jnp.zeros((g.br,), dt) for _ in range(kk))
    accs = lax.fori_loop(0, g.nbc, body, init)
    for c, a in enumerate(accs):
        if grad:
            _store_vec(o_ref, (c,), blk, _vmul(a, 2.0))
        else:
            o_ref[c, pl.ds(blk.start, g.br)] = a.astype(dt)


def _theta_body(p_ref, r_ref, rn_ref, c_ref, cn_ref, g_ref, w_ref, o_ref, *, spec, g):
    """``o[l, r] = sum_q v[r, q] d phi(s_rq) / d p_l``, ``v[r, q] = sum_c g[c, r] w[c, q]``."""
    prof = _Profile(spec, p_ref)
    blk = _Block(r_ref, rn_ref, c_ref, cn_ref, g)
    kk, dt = w_ref.shape[0], o_ref.dtype
    gs = [g_ref[c, pl.ds(blk.start, g.br)] for c in range(kk)]

    def body(jb, accs):
        pr = blk.pairs(jb)
        v = None
        for c in range(kk):
            t = gs[c][:, None] * w_ref[c, pl.ds(pr.cs, g.bc)][None, :]
            v = t if v is None else v + t
        dps = prof.dtheta("phi", pr.s)
        return tuple(a + jnp.sum(v * dp, axis=1) for a, dp in zip(accs, dps, strict=True))

    init = tuple(jnp.zeros((g.br,), dt) for _ in range(spec.num_params))
    accs = lax.fori_loop(0, g.nbc, body, init)
    for idx, a in enumerate(accs):
        o_ref[idx, pl.ds(blk.start, g.br)] = a.astype(dt)


def _gbwd_rows_body(
    p_ref, r_ref, rn_ref, c_ref, cn_ref, w_ref, h_ref, a_ref, dx_ref, *theta_ref, spec, g
):
    """Backward of the gradient sum, one block of ``x`` rows: ``dx`` (and hyperparameters).

    ``dx_r = 2 sum_c h_rc S_rc + 4 sum_q phi''_rq T_rq (x_r - y_q)``, with
    ``S_rc = sum_q w_qc phi'_rq`` and ``T_rq = sum_c w_qc h_rc . (x_r - y_q)``;
    ``theta[l, r] = sum_q T_rq d phi'_rq / d p_l``.
    """
    prof = _Profile(spec, p_ref)
    blk = _Block(r_ref, rn_ref, c_ref, cn_ref, g)
    kk, dt = w_ref.shape[0], dx_ref.dtype
    hs = [blk.row_vecs(h_ref, (c,)) for c in range(kk)]
    hxs = [None if g.direct else a_ref[c, pl.ds(blk.start, g.br)] for c in range(kk)]
    with_theta = bool(theta_ref)

    def body(jb, carry):
        ss, e, th = carry
        pr = blk.pairs(jb)
        g1, g2 = prof.dphi2(pr.s)
        t = None
        new_ss = []
        for c in range(kk):
            wc = w_ref[c, pl.ds(pr.cs, g.bc)][None, :]
            q = wc * pr.row_dot(hs[c], h_ref, (c,), hxs[c])
            t = q if t is None else t + q
            new_ss.append(ss[c] + jnp.sum(g1 * wc, axis=1))
        e = _vadd(e, pr.diff_sum(g2 * t))
        if with_theta:
            dps = prof.dtheta("dphi", pr.s)
            th = tuple(a + jnp.sum(t * dp, axis=1) for a, dp in zip(th, dps, strict=True))
        return tuple(new_ss), e, th

    init = (
        tuple(jnp.zeros((g.br,), dt) for _ in range(kk)),
        _vzeros(g, r_ref.shape[0], dt),
        tuple(jnp.zeros((g.br,), dt) for _ in range(spec.num_params if with_theta else 0)),
    )
    ss, e, th = lax.fori_loop(0, g.nbc, body, init)
    dx = _vmul(e, 4.0)
    for c in range(kk):
        dx = _vadd(dx, _vscale(hs[c], 2.0 * ss[c]))
    _store_vec(dx_ref, (), blk, dx)
    if with_theta:

        def store():
            for idx, a in enumerate(th):
                theta_ref[0][idx, pl.ds(blk.start, g.br)] = a.astype(dt)

        _store_once(blk, store)


def _gbwd_cols_body(
    p_ref, r_ref, rn_ref, c_ref, cn_ref, w_ref, h_ref, a_ref, dy_ref, dw_ref, *, spec, g
):
    """Backward of the gradient sum, one block of ``y`` rows (loop over ``x``): ``dy``, ``dw``.

    With ``Q_c[j, i] = h_ic . (x_i - y_j)``, ``T = sum_c w_jc Q_c``:
    ``dy_j = -2 sum_c w_jc sum_i phi'_ij h_ic + 4 sum_i phi''_ij T_ji (y_j - x_i)`` and
    ``dw_jc = 2 sum_i phi'_ij Q_c[j, i]``.
    """
    prof = _Profile(spec, p_ref)
    blk = _Block(r_ref, rn_ref, c_ref, cn_ref, g)
    kk, dt = w_ref.shape[0], dy_ref.dtype
    ws = [w_ref[c, pl.ds(blk.start, g.br)] for c in range(kk)]

    def body(ib, carry):
        bs, dws, e = carry
        pr = blk.pairs(ib)
        g1, g2 = prof.dphi2(pr.s)
        t = None
        new_bs, new_dws = [], []
        for c in range(kk):
            q = pr.col_dot(h_ref, (c,), None if g.direct else a_ref[c, pl.ds(pr.cs, g.bc)])
            tc = ws[c][:, None] * q
            t = tc if t is None else t + tc
            new_bs.append(_vadd(bs[c], pr.col_sum(g1, h_ref, (c,))))
            new_dws.append(dws[c] + jnp.sum(g1 * q, axis=1))
        e = _vadd(e, pr.diff_sum(g2 * t))
        return tuple(new_bs), tuple(new_dws), e

    dd = r_ref.shape[0]
    init = (
        tuple(_vzeros(g, dd, dt) for _ in range(kk)),
        tuple(jnp.zeros((g.br,), dt) for _ in range(kk)),
        _vzeros(g, dd, dt),
    )
    bs, dws, e = lax.fori_loop(0, g.nbc, body, init)
    dy = _vmul(e, 4.0)
    for c in range(kk):
        dy = _vadd(dy, _vscale(bs[c], -2.0 * ws[c]))
    _store_vec(dy_ref, (), blk, dy)

    def store():
        for c in range(kk):
            dw_ref[c, pl.ds(blk.start, g.br)] = (2.0 * dws[c]).astype(dt)

    _store_once(blk, store)
