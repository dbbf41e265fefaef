"""Pair geometry inside a Pallas body: one program's block of rows against blocks of columns.

Squared distances (direct or GEMM form), the per-coordinate sums and dot products of a block of
pairs, stores of per-coordinate results, and helpers for per-coordinate values (a tuple of ``d``
vectors ``[br]`` in the direct form, the program's coordinate chunk ``[dk, br]`` in the GEMM
form).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mmdflow.kernels import HIGHEST
from mmdflow.kernels._base import gemm_zero_tol

_DN_00 = (((0,), (0,)), ((), ()))  # contract the leading dims: a[k, p] . b[k, q] -> [p, q]
_DN_11 = (((1,), (1,)), ((), ()))  # contract the trailing dims: a[p, k] . b[q, k] -> [p, q]


# Layouts (all transposed, the point index last): points [d', N] with their squared norms [N],
# per-point weights [k, N], per-point vectors [k, d', N]. d' = d in the direct form; in the
# GEMM form d' is the padded dimension, a multiple of the coordinate chunk ``dk``.
@dataclasses.dataclass(frozen=True)
class _Geom:
    """Static shape of one launch: tiles, direct or GEMM form, coordinate chunking."""

    br: int  # rows per program
    bc: int  # columns per loop step
    nbc: int  # loop steps
    direct: bool
    dk: int  # coordinate chunk of the GEMM form (the K-loop of x.y and the per-program chunk)
    nck: int  # chunks in d'


def _rows(ref, lead, start, size, g: _Geom):
    """Direct form: the ``d`` coordinate rows ``ref[*lead, a, start:start+size]``."""
    return tuple(ref[(*lead, a, pl.ds(start, size))] for a in range(ref.shape[len(lead)]))


def _chunk(ref, lead, ci, start, size, g: _Geom):
    """GEMM form: coordinate chunk ``ci`` ``[dk, size]`` of ``ref[*lead, :, start:start+size]``."""
    return ref[(*lead, pl.ds(ci * g.dk, g.dk), pl.ds(start, size))]


def _dot_all(a_ref, a_lead, a_start, a_size, b_ref, b_lead, b_start, b_size, g: _Geom):
    """``sum_a A[a, p] B[a, q]`` ``[a_size, b_size]`` over all coordinates, chunk by chunk."""

    def body(ci, acc):
        a = _chunk(a_ref, a_lead, ci, a_start, a_size, g)
        b = _chunk(b_ref, b_lead, ci, b_start, b_size, g)
        return acc + lax.dot_general(a, b, _DN_00, precision=HIGHEST)

    acc = jnp.zeros((a_size, b_size), a_ref.dtype)
    if g.nck == 1:
        return body(0, acc)
    return lax.fori_loop(0, g.nck, body, acc)


class _Block:
    """One program's block of rows ``start:start+br`` of ``r_ref`` (and its coordinate chunk)."""

    def __init__(self, r_ref, rn_ref, c_ref, cn_ref, g: _Geom):
        self.r_ref, self.c_ref, self.cn_ref, self.g = r_ref, c_ref, cn_ref, g
        self.start = pl.program_id(0) * g.br
        self.dc = pl.program_id(1)  # the coordinate chunk this program accumulates (GEMM form)
        if g.direct:
            self.xr = _rows(r_ref, (), self.start, g.br, g)
        else:
            self.xn = rn_ref[pl.ds(self.start, g.br)]
            self.xr = _chunk(r_ref, (), self.dc, self.start, g.br, g)

    def row_vecs(self, ref, lead):
        """Per-row vectors of this block: direct rows, or this program's chunk ``[dk, br]``."""
        if self.g.direct:
            return _rows(ref, lead, self.start, self.g.br, self.g)
        return _chunk(ref, lead, self.dc, self.start, self.g.br, self.g)

    def pairs(self, jb):
        return _Pairs(self, jb * self.g.bc)


class _Pairs:
    """A block of rows against the block of columns ``cs:cs+bc``.

    Per-coordinate results (``diff_sum``, ``col_sum``) are tuples of ``d`` vectors ``[br]``
    in the direct form and the program's coordinate chunk ``[dk, br]`` in the GEMM form.
    """

    def __init__(self, blk: _Block, cs):
        g = self.g = blk.g
        self.blk, self.cs = blk, cs
        if g.direct:
            yc = _rows(blk.c_ref, (), cs, g.bc, g)
            self.diffs = tuple(a[:, None] - b[None, :] for a, b in zip(blk.xr, yc, strict=True))
            s = self.diffs[0] * self.diffs[0]
            for da in self.diffs[1:]:
                s = s + da * da
        else:
            yn = blk.cn_ref[pl.ds(cs, g.bc)]
            xy = _dot_all(blk.r_ref, (), blk.start, g.br, blk.c_ref, (), cs, g.bc, g)
            # exact 0 within the GEMM form's rounding bound (coincident points), as in sqdist
            t = blk.xn[:, None] + yn[None, :]
            s = t - 2.0 * xy
            s = jnp.where(s > gemm_zero_tol(g.dk * g.nck, s.dtype) * t, s, jnp.zeros_like(s))
        self.s = s

    def diff_sum(self, p):
        """``sum_q p[r, q] (x_r - y_q)``."""
        if self.g.direct:
            return tuple(jnp.sum(p * da, axis=1) for da in self.diffs)
        # coincident pairs (s == 0, exact) contribute p (x_r - y_q) = 0: drop their GEMM residue
        p = jnp.where(self.s == 0, jnp.zeros_like(p), p)
        yc = _chunk(self.blk.c_ref, (), self.blk.dc, self.cs, self.g.bc, self.g)
        rs = jnp.sum(p, axis=1)
        return self.blk.xr * rs[None, :] - lax.dot_general(yc, p, _DN_11, precision=HIGHEST)

    def col_sum(self, p, h_ref, lead):
        """``sum_q p[r, q] h_q`` for per-column vectors ``h_ref[*lead, :, q]``."""
        if self.g.direct:
            hc = _rows(h_ref, lead, self.cs, self.g.bc, self.g)
            return tuple(jnp.sum(p * h[None, :], axis=1) for h in hc)
        hc = _chunk(h_ref, lead, self.blk.dc, self.cs, self.g.bc, self.g)
        return lax.dot_general(hc, p, _DN_11, precision=HIGHEST)

    def row_dot(self, hr, h_ref, lead, hx):
        """``h_r . (x_r - y_q)`` ``[br, bc]``: ``hr`` direct rows, ``hx = h_r . x_r``."""
        if self.g.direct:
            out = hr[0][:, None] * self.diffs[0]
            for h, da in zip(hr[1:], self.diffs[1:], strict=True):
                out = out + h[:, None] * da
            return out
        blk, g = self.blk, self.g
        out = hx[:, None] - _dot_all(h_ref, lead, blk.start, g.br, blk.c_ref, (), self.cs, g.bc, g)
        return jnp.where(self.s == 0, jnp.zeros_like(out), out)  # x_r = y_q exactly

    def col_dot(self, h_ref, lead, hy):
        """``h_q . (y_q - x_r)`` ``[br, bc]`` for per-column vectors; ``hy = h_q . y_q``."""
        g, blk = self.g, self.blk
        if g.direct:
            hc = _rows(h_ref, lead, self.cs, g.bc, g)
            out = hc[0][None, :] * self.diffs[0]
            for h, da in zip(hc[1:], self.diffs[1:], strict=True):
                out = out + h[None, :] * da
            return -out
        out = hy[None, :] - _dot_all(blk.r_ref, (), blk.start, g.br, h_ref, lead, self.cs, g.bc, g)
        return jnp.where(self.s == 0, jnp.zeros_like(out), out)  # x_r = y_q exactly


def _store_vec(ref, lead, blk: _Block, v):
    """Stores a per-coordinate result (direct rows, or the program's chunk) of this block."""
    g = blk.g
    if g.direct:
        for a, va in enumerate(v):
            ref[(*lead, a, pl.ds(blk.start, g.br))] = va.astype(ref.dtype)
    else:
        ref[(*lead, pl.ds(blk.dc * g.dk, g.dk), pl.ds(blk.start, g.br))] = v.astype(ref.dtype)


def _store_once(blk: _Block, store):
    """Runs ``store`` in the first coordinate-chunk program only (results that have no d axis)."""
    if blk.g.direct or blk.g.nck == 1:
        store()
    else:
        pl.when(blk.dc == 0)(store)


def _vadd(a, b):
    if isinstance(a, tuple):
        return tuple(u + v for u, v in zip(a, b, strict=True))
    return a + b


def _vscale(a, v):
    """Per-coordinate ``a`` times a per-row vector ``v [b]``."""
    if isinstance(a, tuple):
        return tuple(u * v for u in a)
    return a * v[None, :]


def _vmul(a, c):
    if isinstance(a, tuple):
        return tuple(u * c for u in a)
    return a * c


def _vzeros(g: _Geom, d: int, dtype):
    if g.direct:
        return tuple(jnp.zeros((g.br,), dtype) for _ in range(d))
    return jnp.zeros((g.dk, g.br), dtype)
