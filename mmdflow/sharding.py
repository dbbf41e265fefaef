"""Running on a device mesh: meshes and sharded point sets.

Sharding is configuration, not a second API. Every kernel sum, estimator, critic, flow and
generator direction runs on a mesh when given ``sums=ops.SumConfig(mesh=mesh)`` (flows:
``flows.make(name, ..., mesh=mesh)``): both point sets of a kernel sum
``out[i] = sum_j w[j] k(x_i, y_j)`` are split by rows over one mesh axis (``"data"`` by
default); each device computes the output rows of its own ``x`` shard against *all* of
``y``, so per-point outputs stay sharded like ``x`` and scalar estimators are reductions of
local weighted sums: the result is the one-device value (not an average of per-device
ones), up to floating-point summation order.

Two communication strategies (``SumConfig.strategy``, ``jax.shard_map`` over the axis):

* ``"allgather"``: ``lax.all_gather`` the ``y`` / weight shards, then one local blocked
  sum. Every device briefly holds all of ``y``; reverse mode transposes the gather into a
  ``psum_scatter`` of the ``y`` cotangents (plain JAX AD).
* ``"ring"``: ``D - 1`` rotations of the ``y`` / weight shards around the ring with
  ``lax.ppermute``, so no device ever holds more than two ``y`` shards. Reverse mode is a
  hand-written ``custom_vjp`` that runs the ring again and rotates the ``y`` cotangent
  accumulators *with* their shards, keeping the same O((n + m) / D) memory. Forward-mode
  AD (``jax.jvp``) is therefore not available under ``"ring"``; use ``"allgather"``.

Uneven sizes. JAX arrays cannot be sharded unevenly. Every point set is padded to
``N = D ceil(n / D)`` rows by repeating its last point with *zero weight* (finite kernel
values, no contribution to any sum or gradient). Plain ``[n, d]`` inputs give ``[n, ...]``
outputs; :class:`ShardedPoints` inputs (from :func:`shard_points`, which pads explicitly,
records ``n`` and carries the weights) give *padded* ``[N, ...]`` outputs sharded
``P(axis)``, whose rows ``>= n`` are to be ignored (``ShardedPoints.unpad``). Nothing is
ever padded silently into user data.

Notes:

* Meshes may have ``Auto`` axis types (:func:`make_mesh`) or ``Explicit`` ones (the
  ``jax.make_mesh`` default; inputs are resharded), and more axes than ``axis``
  (everything is replicated over the others).
* Flows (:class:`~mmdflow.flows.ParticleFlow` with a ``mesh``) pad and shard the particles
  and targets; random features and neural critics are partitioned by ``jit``.
* Generator directions (:func:`mmdflow.kernelized.direction` with ``sums=``): the latent
  batch is sharded when the axis size divides it, the parameters replicated; ``jit``
  reduces the parameter cotangents.
* Several hosts: start one process per host, call ``jax.distributed.initialize()``
  first, and build the mesh over ``jax.devices()`` (all hosts' devices); every
  process passes the same full arrays (see the README).

Example:
  >>> import jax
  >>> import mmdflow
  >>> from mmdflow import kernels, ops, sharding
  >>> mesh = sharding.make_mesh()              # all devices, axis "data"
  >>> x = jax.random.normal(jax.random.key(0), (64, 2))
  >>> k = kernels.Gaussian(1.0)
  >>> v = mmdflow.mmd2(x, x + 1.0, k, sums=ops.SumConfig(mesh=mesh, strategy="ring"))
  >>> bool(v > 0)
  True
"""

from mmdflow._mesh import DEFAULT_AXIS, ShardedPoints, make_mesh, shard_points

__all__ = ["DEFAULT_AXIS", "make_mesh", "ShardedPoints", "shard_points"]
