"""Drivers: :func:`scan` (one ``lax.scan``) and :func:`run` (host chunks with records)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import jax
import numpy as np

from mmdflow._checks import check_int, check_points
from mmdflow.flows._state import FlowState
from mmdflow.kernels import Kernel
from mmdflow.mmd import _weights, mmd2


def _host(a):
    """``a`` as a NumPy array; arrays sharded over several processes are all-gathered."""
    if getattr(a, "is_fully_addressable", True):
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def scan(stepper, state: FlowState, y: jax.Array, num_steps: int, wy: jax.Array | None = None):
    """Runs ``num_steps`` steps in one ``lax.scan``; returns ``(state, stacked aux)``."""
    return jax.lax.scan(lambda s, _: stepper.step(s, y, wy), state, None, length=num_steps)


def run(
    stepper,
    x0: jax.Array,
    y: jax.Array,
    *,
    num_steps: int,
    key: jax.Array,
    record_every: int = 10,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    mmd_kernel: Kernel | None = None,
    record_trajectory: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    impl: str = "auto",
):
    """Runs a flow from the host in jitted chunks of ``record_every`` steps.

    After every chunk (and at step 0) it records the biased MMD^2 between the
    particles and the target under ``mmd_kernel`` (default: the stepper's
    kernel), the last step's kinetic energy ``mean |dx|^2 / step_size`` and critic
    value (Sobolev discrepancy estimate), and the wall time. The chunk function
    is compiled once (a remainder chunk, if any, once more).

    Args:
      stepper: an object with ``init`` and ``step``.
      x0: ``[n, d]`` initial particles.
      y: ``[m, d]`` target samples.
      num_steps: number of steps.
      key: PRNG key.
      record_every: steps per recorded point.
      wx, wy: optional particle / target weights.
      mmd_kernel: kernel for the recorded MMD^2.
      record_trajectory: also return particles at every record, ``[R, n, d]``.
      callback: called as ``callback(step, record)`` after each chunk (progress bars).
      impl: kernel-sum implementation for the recorded MMD^2.

    Returns:
      ``(final_state, history)`` with history a dict of NumPy arrays: ``step``,
      ``mmd2``, ``kinetic``, ``critic``, ``wall_time`` (seconds since start,
      compile time included in the first chunk), and ``trajectory`` if requested.
    """
    check_int(None, "num_steps", num_steps, minimum=0)
    check_int(None, "record_every", record_every)
    state = stepper.init(x0, key, wx)
    y = check_points("y", y, d=state.x.shape[1], other="x0")
    if wy is not None:  # checked here: inside the jitted chunks below it is traced
        _weights("wy", wy, y.shape[0], "y", y.dtype)
    kmmd = mmd_kernel if mmd_kernel is not None else stepper.kernel

    # y and wy are arguments, not closed-over constants (no constant folding of the target)
    @jax.jit
    def measure(x, wx, yy, wyy):
        return mmd2(x, yy, kmmd, wx=wx, wy=wyy, impl=impl)

    chunk = jax.jit(lambda s, yy, wyy, n: scan(stepper, s, yy, n, wyy), static_argnums=3)
    nan = float("nan")
    hist = {
        "step": [0],
        "mmd2": [float(measure(state.x, state.wx, y, wy))],
        "kinetic": [nan],
        "critic": [nan],
    }
    traj = [_host(state.x)] if record_trajectory else None
    t0 = time.perf_counter()
    hist["wall_time"] = [0.0]
    done = 0
    for _ in range(math.ceil(num_steps / record_every)):
        n = min(record_every, num_steps - done)
        state, aux = chunk(state, y, wy, n)
        done += n
        rec = {
            "step": done,
            "mmd2": float(measure(state.x, state.wx, y, wy)),
            "kinetic": float(aux["kinetic"][-1]),
            "critic": float(aux["critic"][-1]),
            "wall_time": time.perf_counter() - t0,
        }
        for name, val in rec.items():
            hist[name].append(val)
        if record_trajectory:
            traj.append(_host(state.x))
        if callback is not None:
            callback(done, rec)
    out = {name: np.asarray(v) for name, v in hist.items()}
    if record_trajectory:
        out["trajectory"] = np.stack(traj)
    return state, out
