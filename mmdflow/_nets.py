"""Small Flax NNX building blocks shared by generators and critics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
    """MLP ``[M, in_dim] -> [M, out_dim]``: dense layers of widths ``hidden`` with ``activation``,
    then a linear output layer."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int],
        *,
        activation: Callable[[jax.Array], jax.Array],
        rngs: nnx.Rngs,
    ) -> None:
        dims = [in_dim, *hidden]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.out = nnx.Linear(dims[-1], out_dim, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for layer in self.layers:
            h = self.activation(layer(h))
        return self.out(h)
