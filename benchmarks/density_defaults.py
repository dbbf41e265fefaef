"""Default steps of the density flows (SVGD, KSD descent) on the built-in densities.

200 particles from N(0, I), 500 Euler steps, Gaussian kernel of bandwidth 1; prints the
MMD^2 (bandwidth 1) of the particles to 2,000 exact samples of each density in
``mmdflow.densities.DENSITIES`` (and of 200 exact samples, for scale), per step size.

Usage: ``python benchmarks/density_defaults.py {svgd,svgd-median,ksd,srmmd} 0.3,1.0,3.0
[REGS]`` (``svgd-median``: SVGD with Liu & Wang's per-step median bandwidth; ``srmmd``: the
SrMMD flow with the Stein kernel, alpha 1, at each ``lambda`` of ``REGS``, default 1). The
numbers are in ``mmdflow/fields/_svgd.py``, ``_ksd.py`` and ``_srmmd.py`` next to
``STEP_FACTOR`` / ``DENSITY_STEP_FACTOR``.
"""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mmdflow import densities, fields, flows, kernels, median_bandwidth, mmd2

N, STEPS = 200, 500
which = sys.argv[1]
facs = [float(v) for v in sys.argv[2].split(",")]
regs = [float(v) for v in sys.argv[3].split(",")] if len(sys.argv) > 3 else [1.0]
x0 = jax.random.normal(jax.random.key(0), (N, 2))
k = kernels.Gaussian(1.0)


@dataclasses.dataclass(frozen=True)
class MedianSVGD:
    logp: object
    sums: object = fields.SVGDField.__dataclass_fields__["sums"].default
    step_size = 0.1
    target = "density"
    kernel = k

    def init(self, x0, key, y=None):
        return None

    def fit(self, x, wx, y, wy, extra, key, count):
        bw = median_bandwidth(x) / jnp.sqrt(2 * jnp.log(x.shape[0] + 1.0))
        return fields.SVGDField(self.logp, kernels.Gaussian(bw)).fit(
            x, wx, y, wy, extra, key, count
        )


def field(p, reg):
    if which == "svgd":
        return fields.SVGDField(p, k)
    if which == "svgd-median":
        return MedianSVGD(p)
    if which == "srmmd":
        return fields.SrMMDField(k, alpha=1.0, reg=reg, logp=p)
    return fields.KSDField(p, k)


for name, p in densities.DENSITIES.items():
    ref = p.sample(jax.random.key(1), 2000)
    base = float(mmd2(x0, ref, k))
    iid = float(mmd2(p.sample(jax.random.key(3), N), ref, k))
    for reg in regs if which == "srmmd" else [None]:
        row = []
        for fac in facs:
            fl = flows.ParticleFlow(field(p, reg), step_size=fac)
            st = fl.init(x0, jax.random.key(2))
            st, _ = jax.jit(lambda s, fl=fl: flows.scan(fl, s, None, STEPS))(st)
            x = np.asarray(st.x)
            m = float(mmd2(st.x, ref, k)) if np.all(np.isfinite(x)) else float("nan")
            row.append(f"{fac:g}: {m:.2e}")
        tag = which if reg is None else f"{which} lambda {reg:g}"
        print(tag, name, f"MMD2 start {base:.2e}, iid {iid:.2e};", " | ".join(row), flush=True)
