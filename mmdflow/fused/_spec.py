"""Supported kernels and their packing for the Pallas bodies.

A supported kernel's numeric leaves are packed into one parameter vector (``_spec_and_params``);
the static ``_Spec`` rebuilds the kernel from those scalars inside a kernel body, where
``_Profile`` evaluates ``phi``, ``phi'``, ``phi''`` and the hyperparameter derivatives
elementwise in the squared distance.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from mmdflow.kernels import MixtureRBF, RadialKernel
from mmdflow.kernels._base import _nonnegative, _positive


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
        # traced scalars here: an invalid value gives NaN, as in MixtureRBF itself
        bws = tuple(_positive(b) for b in kern.bandwidths)
        ws = (None,) * len(bws) if kern.weights is None else tuple(map(_nonnegative, kern.weights))

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
