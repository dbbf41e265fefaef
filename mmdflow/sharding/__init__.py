"""Kernel sums, MMD^2 and witnesses over point sets sharded along the sample axis.

Both point sets of a kernel sum ``out[i] = sum_j w[j] k(x_i, y_j)`` are split by rows
over one mesh axis (``"data"`` by default, ``PartitionSpec("data")``): device ``r``
holds rows ``r N/D .. (r+1) N/D`` of ``x`` *and* of ``y``. Each device computes the
output rows of its own ``x`` shard against *all* of ``y``, so per-point outputs stay
sharded like ``x`` and scalar estimators are ``psum`` s of local weighted sums: the
result is the single-device estimator (not an average of per-device MMDs), up to
floating-point summation order.

Two communication strategies (``jax.shard_map`` over the mesh axis):

* ``"allgather"``: ``lax.all_gather`` the ``y`` / weight shards, then one local
  blocked sum (:func:`mmdflow.ops.kernel_matvec` with ``impl="blocked"``). Every
  device briefly holds all of ``y``; reverse mode transposes the gather into a
  ``psum_scatter`` of the ``y`` cotangents (plain JAX AD).
* ``"ring"``: ``D - 1`` rotations of the ``y`` / weight shards around the ring with
  ``lax.ppermute``, accumulating the local partial sums, so no device ever holds
  more than two ``y`` shards. Reverse mode is a hand-written ``custom_vjp`` that runs
  the ring again and rotates the ``y`` cotangent accumulators *with* their shards
  (``D`` more rotations bring them home), so the backward pass keeps the same
  O((n + m) / D) memory (plain AD of the scan would stash every visiting shard,
  i.e. all of ``y``). Forward-mode AD (``jax.jvp``) is therefore not available
  under ``"ring"``; use ``"allgather"`` for it.

Uneven sizes. JAX arrays cannot be sharded unevenly (``n`` not a multiple of the
device count ``D`` cannot carry ``NamedSharding(mesh, P("data"))``). Internally every
point set is padded to ``N = D ceil(n / D)`` rows by repeating its last point with
*zero weight* (finite kernel values, no contribution to any sum or gradient). Then:

* plain ``[n, d]`` array inputs give ``[n, ...]`` outputs; these are sharded
  ``P("data")`` when ``D`` divides ``n`` and otherwise come back in whatever layout
  XLA picks for the sliced result (typically replicated);
* :class:`ShardedPoints` inputs (from :func:`shard_points`, which pads explicitly
  and records ``n``) give *padded* ``[N, ...]`` outputs, always sharded ``P("data")``;
  rows ``>= n`` are values at the padding copies, to be ignored
  (``ShardedPoints.unpad``). Nothing is ever padded silently into user data:
  padding lives in the container, with its zero weights and ``n``.

Scalars (``sharded_mmd2``) do not depend on the choice.

Notes:

* Meshes may have ``Auto`` axis types (:func:`make_mesh`) or ``Explicit`` ones (the
  ``jax.make_mesh`` default; inputs are resharded), and more axes than ``axis``
  (everything is replicated over the others).
* The ``shard_map`` bodies of the kernel sums run with ``check_vma=False``: the
  blocked sums of :mod:`mmdflow.ops` start their scan carries from device-invariant
  zeros, which the varying-axes type check rejects. Autodiff results are the same
  either way (checked against single-device gradients in the tests).
* Flows need no sharded twin: ``flows.make(name, ..., mesh=mesh)`` (a
  :class:`~mmdflow.flows.ParticleFlow` with a ``mesh``) pads and shards the particles and
  targets, and its field's kernel sums (``ops.SumConfig(mesh=..., strategy=...)``) run as
  the collectives here: the MMD flow's witness gradient, the exact Sobolev critic by CG on
  sharded coefficients; random features and neural critics are partitioned by ``jit``.
* Generators: :func:`sharded_direction` (or the drop-in :func:`direction_fn`) is
  :func:`mmdflow.kernelized.direction` with the latent and target batches sharded and
  the parameters replicated: local JVPs / VJPs, ``psum`` of the parameter
  cotangents, sharded kernel sums over all generated samples, CG on replicated
  parameter vectors.
* Several hosts: start one process per host, call ``jax.distributed.initialize()``
  first, and build the mesh over ``jax.devices()`` (all hosts' devices); every
  process passes the same full arrays (see the README).

Example:
  >>> import jax
  >>> from mmdflow import kernels, sharding
  >>> mesh = sharding.make_mesh()              # all devices, axis "data"
  >>> x = jax.random.normal(jax.random.key(0), (64, 2))
  >>> y = x + 1.0
  >>> k = kernels.Gaussian(1.0)
  >>> v = sharding.sharded_mmd2(x, y, k, mesh, strategy="ring")
  >>> bool(v > 0)
  True
"""

from mmdflow.sharding._kernelized import SHARDED_DIRECTIONS, direction_fn, sharded_direction
from mmdflow.sharding._mesh import DEFAULT_AXIS, STRATEGIES, ShardedPoints, make_mesh, shard_points
from mmdflow.sharding._mmd import sharded_mmd2, sharded_witness, sharded_witness_grad
from mmdflow.sharding._sobolev import sharded_exact_critic
from mmdflow.sharding._sums import (
    sharded_kernel_grad_matvec,
    sharded_kernel_hessian_matvec,
    sharded_kernel_matvec,
)

__all__ = [
    "STRATEGIES",
    "DEFAULT_AXIS",
    "make_mesh",
    "ShardedPoints",
    "shard_points",
    "sharded_kernel_matvec",
    "sharded_kernel_grad_matvec",
    "sharded_kernel_hessian_matvec",
    "sharded_mmd2",
    "sharded_witness",
    "sharded_witness_grad",
    "sharded_exact_critic",
    "SHARDED_DIRECTIONS",
    "sharded_direction",
    "direction_fn",
]
