"""mmdflow: kernel-discrepancy (MMD / Sobolev) gradient flows in JAX.

Layers (no upward imports): ``kernels``, ``sharding`` (meshes, sharded point sets) -> ``ops``
(kernel sums, one device or a mesh, by ``ops.SumConfig``) -> ``mmd`` (MMD^2, witness),
``sobolev`` (critics) -> ``fields`` (velocity fields) -> ``flows``
(``ParticleFlow``, the registry ``FLOWS``) -> ``kernelized``, ``critics``, ``train`` (generators)
-> ``cli``.
"""

from mmdflow import kernels, ops
from mmdflow._compile_cache import enable_compilation_cache
from mmdflow.kernels import median_bandwidth
from mmdflow.mmd import mmd2, mmd2_variance, witness, witness_grad

__version__ = "0.1.0"

__all__ = [
    "enable_compilation_cache",
    "kernels",
    "ops",
    "median_bandwidth",
    "mmd2",
    "mmd2_variance",
    "witness",
    "witness_grad",
]
