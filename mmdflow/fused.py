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
accumulated) in fp32 and cast back. Up to ``DIRECT_MAX_D`` dimensions squared distances are
sums of squared coordinate differences (exact, no cancellation); above it the points are
centred (on the mean of ``y``), their coordinates zero-padded (to a power of two ``>= 16``, or
to a multiple of ``GEMM_CHUNK`` above it: Triton tiles are powers of two, zero coordinates do
not change distances) and the GEMM form ``|x|^2 + |y|^2 - 2 x.y`` is evaluated with
``precision=HIGHEST`` (IEEE fp32 in Triton, never TF32), ``x.y`` in a loop over coordinate
chunks of ``GEMM_CHUNK``, so that no ``[d, block]`` tile is held in registers at large ``d``.
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

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mmdflow._checks import check_block_size, check_sum_inputs
from mmdflow.kernels import DIRECT_MAX_D, HIGHEST, Kernel, MixtureRBF, RadialKernel

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
MIN_BLOCK = 16  # Triton's tl.dot needs every dimension >= 16
MAX_BLOCK = 256
GEMM_MIN_D = 16  # smallest padded dimension of the GEMM distance form (a tl.dot operand)
GEMM_CHUNK = 64  # coordinates per chunk of the GEMM form (K-loop of x.y; per-program slice)
_FLOATS_UPCAST = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_DN_00 = (((0,), (0,)), ((), ()))  # contract the leading dims: a[k, p] . b[k, q] -> [p, q]
_DN_11 = (((1,), (1,)), ((), ()))  # contract the trailing dims: a[p, k] . b[q, k] -> [p, q]


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _prev_pow2(v: int) -> int:
    return 1 << (int(v).bit_length() - 1)


def default_interpret() -> bool:
    """``True`` (Pallas interpret mode) unless the default JAX backend is a GPU."""
    return jax.default_backend() != "gpu"


# ---------------------------------------------------------------- supported kernels
def _unsupported_reason(k) -> str | None:
    if not isinstance(k, RadialKernel):
        return (
            f"{type(k).__name__} is not a RadialKernel (Sum, Scaled, dot-product and custom "
            "kernels have no fused path)"
        )
    leaves = jax.tree.leaves(_canonical(k))
    for leaf in leaves:
        if not hasattr(leaf, "dtype") and not isinstance(leaf, int | float):
            return f"{type(k).__name__} has a non-numeric leaf {leaf!r}"
        shape = jnp.shape(leaf)
        if isinstance(k, MixtureRBF):
            if len(shape) != 1:
                return f"MixtureRBF leaves must be 1-D; got shape {shape}"
        elif shape != ():
            return f"{type(k).__name__} has a non-scalar leaf of shape {shape}"
    return None


def _canonical(k):
    """``MixtureRBF`` with tuple hyperparameters -> one ``[L]`` array leaf per field."""
    if isinstance(k, MixtureRBF):
        wts = None if k.weights is None else jnp.asarray(k.weights)
        return MixtureRBF(jnp.asarray(k.bandwidths), wts)
    return k


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


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static description of a kernel: how to rebuild it from the packed parameter vector."""

    cls: type  # part of the jit cache key: treedefs of different dataclasses compare equal
    treedef: object
    shapes: tuple  # per leaf: () or (L,)

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def rebuild(self, ps):
        """The kernel with leaves taken from the scalars ``ps`` (``[L]`` leaves as tuples)."""
        leaves, off = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            leaves.append(ps[off] if shape == () else tuple(ps[off : off + size]))
            off += size
        return jax.tree.unflatten(self.treedef, leaves)


def _spec_and_params(k, dtype):
    leaves, treedef = jax.tree.flatten(k)
    shapes = tuple(tuple(jnp.shape(leaf)) for leaf in leaves)
    flat = [jnp.asarray(leaf).astype(dtype).reshape(-1) for leaf in leaves]
    # a trailing 1.0: the unit tangent of the in-kernel forward-mode derivatives, read from
    # memory because Triton's lowering cannot negate a literal constant (jvp of 1/p does)
    params = jnp.concatenate([*flat, jnp.ones((1,), dtype)])
    return _Spec(type(k), treedef, shapes), params


def _profiles(kern):
    """``(phi, dphi)`` elementwise in the squared distance, for a kernel rebuilt from scalars."""
    if isinstance(kern, MixtureRBF):
        bws = kern.bandwidths
        ws = (None,) * len(bws) if kern.weights is None else kern.weights

        def phi(s):
            out = 0.0
            for bw, wl in zip(bws, ws, strict=True):
                t = jnp.exp(-s / (2.0 * bw * bw))
                out = out + (t if wl is None else wl * t)
            return out

        def dphi(s):
            out = 0.0
            for bw, wl in zip(bws, ws, strict=True):
                c = 1.0 / (2.0 * bw * bw)
                t = -c * jnp.exp(-s * c)
                out = out + (t if wl is None else wl * t)
            return out

        return phi, dphi
    return kern.profile, kern.profile_grad


class _Profile:
    """The kernel's profile functions inside a Pallas body (parameters read from ``p_ref``)."""

    def __init__(self, spec: _Spec, p_ref):
        self.spec = spec
        self.ps = tuple(p_ref[i] for i in range(spec.num_params))
        self.one = p_ref[spec.num_params]
        self.phi, self.dphi = _profiles(spec.rebuild(self.ps))

    def dphi2(self, s):
        """``(phi'(s), phi''(s))``."""
        return jax.jvp(self.dphi, (s,), (jnp.ones_like(s),))

    def dtheta(self, which: str, s):
        """``[d f / d p_l for l]`` elementwise, ``f = phi`` or ``phi'`` (forward mode per param)."""
        out = []
        for idx in range(len(self.ps)):

            def f(pl_, idx=idx):
                ps = self.ps[:idx] + (pl_,) + self.ps[idx + 1 :]
                fns = _profiles(self.spec.rebuild(ps))
                return fns[0 if which == "phi" else 1](s)

            out.append(jax.jvp(f, (self.ps[idx],), (self.one,))[1])
        return out


# ---------------------------------------------------------------- pair geometry
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
            s = jnp.maximum(blk.xn[:, None] + yn[None, :] - 2.0 * xy, 0.0)
        self.s = s

    def diff_sum(self, p):
        """``sum_q p[r, q] (x_r - y_q)``."""
        if self.g.direct:
            return tuple(jnp.sum(p * da, axis=1) for da in self.diffs)
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
        return hx[:, None] - _dot_all(h_ref, lead, blk.start, g.br, blk.c_ref, (), self.cs, g.bc, g)

    def col_dot(self, h_ref, lead, hy):
        """``h_q . (y_q - x_r)`` ``[br, bc]`` for per-column vectors; ``hy = h_q . y_q``."""
        g, blk = self.g, self.blk
        if g.direct:
            hc = _rows(h_ref, lead, self.cs, g.bc, g)
            out = hc[0][None, :] * self.diffs[0]
            for h, da in zip(hc[1:], self.diffs[1:], strict=True):
                out = out + h[None, :] * da
            return -out
        return hy[None, :] - _dot_all(blk.r_ref, (), blk.start, g.br, h_ref, lead, self.cs, g.bc, g)


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


# ---------------------------------------------------------------- Pallas kernel bodies
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


# ---------------------------------------------------------------- launching
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


def _compute_dtype(dtype):
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype) in _FLOATS_UPCAST else jnp.dtype(dtype)


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


# ---------------------------------------------------------------- custom_vjp ops
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


# ---------------------------------------------------------------- public API
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
        c = lax.stop_gradient(jnp.mean(y, axis=0, keepdims=True))
        x, y = x - c, y - c
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
