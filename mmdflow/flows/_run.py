"""Drivers: :func:`scan` (one ``lax.scan``) and :func:`run` (host chunks with records)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdflow._checks import check_int, check_points, normalized_weights
from mmdflow.flows._particle import ParticleFlow, is_density_flow
from mmdflow.flows._state import FlowState
from mmdflow.kernels import Kernel
from mmdflow.ksd import ksd2
from mmdflow.mmd import mmd2
from mmdflow.ops import SumConfig, kernel_matvec

#: :func:`run` stops when a recorded MMD^2 exceeds this times
#: ``max(first record, E k(y, y') / 2)`` (or ``E k(y, y')``, if lower and above the first
#: record). Measured with ``mmdflow flow`` (peak MMD^2 over ``max(first, E k(y, y') / 2)``;
#: over ``E k(y, y')``): healthy runs peak at <= 1.0; <= 0.5 (defaults gaussian ->
#: 8gaussians 1.0; 0.50, i.e. the first record; MMD flow noise 0.1 moons -> rings 0.48;
#: 0.24; neural Sobolev on letter 0.28; 0.14; noisy MMD flows started on the target: noise
#: 0.5 on 8gaussians 0.15; 0.08, although MMD^2 rises 14x above its first record; noise
#: 1.0 on moons 0.08; 0.04); blown-up steps reach >= 1.84; >= 1.03 (``--step-size 1e4``:
#: 2.01, particles at 1.5e6; MMD flow ``--step-size 1e3``: 2.01; exact Sobolev ``--reg
#: 1e-8`` at n=100: 1.84, particles at 2.4e3; MMD flow ``--step-size 1e4`` at n=32, whose
#: first record is 0.71 E k(y, y'): 1.44; 1.03, caught by the ``E k(y, y')`` limit).
DIVERGENCE_FACTOR = 1.5
#: :func:`run` keeps each compiled chunk to about this many seconds of measured wall
#: time, so the host regains control (callbacks, Ctrl-C) at least that often.
CHUNK_SECONDS = 1.0

History = dict[str, Any]


def _host(a):
    """``a`` as a NumPy array; arrays sharded over several processes are all-gathered."""
    if getattr(a, "is_fully_addressable", True):
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def scan(
    stepper, state: FlowState, y: jax.Array | None, num_steps: int, wy: jax.Array | None = None
) -> tuple[FlowState, dict[str, jax.Array]]:
    """Runs ``num_steps`` steps in one ``lax.scan`` (pure, jit-able).

    Args:
      stepper: an object with ``init`` and ``step``.
      state: the starting state.
      y: ``[m, d]`` target samples (``None`` for a density flow).
      num_steps: number of steps (static).
      wy: optional ``[m]`` target weights.

    Returns:
      ``(state, aux)``: the state after ``num_steps`` steps and every step's aux
      stacked, each ``[num_steps]``.
    """
    return jax.lax.scan(lambda s, _: stepper.step(s, y, wy), state, None, length=num_steps)


def _chunk_fn(stepper, check_finite: bool):
    """Jitted ``(state, aux, y, wy, n) -> (state, aux, steps_done, finite)``.

    ``n`` is traced (a ``while_loop``): one compilation serves every chunk length, and
    a step runs the same compiled code whatever the chunking, so results do not depend
    on it. With ``check_finite`` the loop stops before a step whose particles are not
    all finite, keeping the last finite state (and its aux).
    """

    def chunk(state, aux, y, wy, n):
        def cond(c):
            return (c[2] < n) & c[3]

        def body(c):
            s, a, i, _ = c
            new, new_aux = stepper.step(s, y, wy)
            if not check_finite:
                return new, new_aux, i + 1, jnp.bool_(True)
            ok = jnp.all(jnp.isfinite(new.x))
            new, new_aux = jax.lax.cond(ok, lambda: (new, new_aux), lambda: (s, a))
            return new, new_aux, i + ok.astype(i.dtype), ok

        return jax.lax.while_loop(cond, body, (state, aux, jnp.int32(0), jnp.bool_(True)))

    return jax.jit(chunk)


@functools.lru_cache(maxsize=16)
def _compiled(stepper, kmmd: Kernel, sums: SumConfig | None, check_finite: bool):
    """The jitted chunk, MMD^2 (a density flow's KSD^2) and ``E k(y, y')`` functions of a
    run (cached across runs)."""

    # y and wy are arguments, not closed-over constants (no constant folding of the target)
    @jax.jit
    def measure(x, wx, yy, wyy):
        if is_density_flow(stepper):
            return ksd2(x, stepper.field.logp, kmmd, wx=wx, sums=sums)
        return mmd2(x, yy, kmmd, wx=wx, wy=wyy, sums=sums)

    @jax.jit
    def escape_level(yy, wyy):  # MMD^2 of particles gone far away: E k(y, y') + E k(x, x')
        b = normalized_weights("wy", wyy, yy.shape[0], "y", yy.dtype)
        return jnp.dot(b, kernel_matvec(kmmd, yy, yy, b, sums=sums))

    return _chunk_fn(stepper, check_finite), measure, escape_level


def _mmd2_limit(first: float, escape: float, factor: float) -> tuple[float, str]:
    """The MMD^2 above which :func:`run` stops, and why (see its docstring)."""
    limit = factor * max(first, escape / 2)
    why = f"{factor:g}x max(first record {first:.3e}, E k(y, y') / 2 = {escape / 2:.3e})"
    if first < escape < limit:
        limit = escape
        why = (
            f"E k(y, y'), the MMD^2 of particles gone far from the target; the first record "
            f"was {first:.3e}"
        )
    return limit, why


def _empty_aux(stepper, state, y, wy):
    """An aux pytree shaped like ``stepper.step``'s: NaN floats, zero integers."""
    shapes = jax.eval_shape(stepper.step, state, y, wy)[1]

    def fill(s):
        v = jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0
        return jnp.full(s.shape, v, s.dtype)

    return jax.tree.map(fill, shapes)


def _replicated_on_mesh(tree):
    """``tree`` with its replicated leaves laid out as the compiled chunks return them.

    On a mesh, leaves the chunk did not make (the key, the step count, scalars from
    ``init`` and :func:`_empty_aux`) arrive replicated but with another sharding type
    (``GSPMDSharding``, one device) than the ``NamedSharding(mesh, P())`` of the chunk's
    outputs; the second chunk would then compile again. Sharded leaves are kept.
    """
    leaves = jax.tree.leaves(tree)
    mesh = next(
        (
            a.sharding.mesh
            for a in leaves
            if isinstance(getattr(a, "sharding", None), jax.sharding.NamedSharding)
        ),
        None,
    )
    if mesh is None:
        return tree
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(a):
        sh = getattr(a, "sharding", None)
        if isinstance(sh, jax.sharding.NamedSharding) or (
            sh is not None and not sh.is_fully_replicated
        ):
            return a
        return jax.device_put(a, rep)

    return jax.tree.map(place, tree)


def _start_history(
    history: Mapping[str, Any], record_trajectory: bool, start: int, metric: str = "mmd2"
) -> dict:
    """Lists from a previous run's history (``diverged`` dropped); checks it continues."""
    need = ("step", metric, "kinetic", "critic", "wall_time")
    missing = [k for k in need if k not in history]
    if record_trajectory and "trajectory" not in history:
        missing.append("trajectory")
    if missing:
        raise ValueError(f"run: `history` lacks {missing} (pass the history `run` returned).")
    hist = {k: [v.item() for v in np.asarray(history[k]).reshape(-1)] for k in need}
    lengths = {len(v) for v in hist.values()}
    if len(lengths) != 1 or not hist["step"]:
        raise ValueError(
            f"run: `history` arrays must have one equal, nonzero length; got {lengths}."
        )
    if hist["step"][-1] > start:
        raise ValueError(
            f"run: `history` goes up to step {hist['step'][-1]}, beyond the state's step {start}."
        )
    return hist


def run(
    stepper,
    x0: jax.Array | None,
    y: jax.Array | None,
    *,
    num_steps: int,
    key: jax.Array | None = None,
    record_every: int = 10,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    mmd_kernel: Kernel | None = None,
    record_trajectory: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    sums: SumConfig | None = None,
    state: FlowState | None = None,
    history: Mapping[str, Any] | None = None,
    on_chunk: Callable[[int, FlowState, Callable[[], History]], None] | None = None,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    chunk_seconds: float = CHUNK_SECONDS,
) -> tuple[FlowState, History]:
    """Runs a flow from the host in short compiled chunks, recording its progress.

    Records are taken at step 0 and at every multiple of ``record_every`` (counted
    from the flow's start, ``state.count``) and at the last step: the biased MMD^2
    between the particles and the target under ``mmd_kernel`` (default: the
    stepper's kernel), the last step's kinetic energy ``mean |dx|^2 / step_size`` and
    critic value (Sobolev discrepancy estimate), and the wall time. Between records
    the steps run in compiled chunks of a traced length (compiled once), each kept to
    about ``chunk_seconds`` of measured wall time; the results do not depend on the
    chunking, so a run continued from a saved ``state`` and ``history`` equals an
    uninterrupted one bit for bit.

    Divergence stops the run early: particles that are no longer all finite (the
    state returned is the last finite one, recorded at its step), or a recorded MMD^2
    that is not finite or above ``divergence_factor`` (:data:`DIVERGENCE_FACTOR`,
    1.5) times ``max(first record, E k(y, y') / 2)`` or, for a flow whose first
    record is below it, above ``E k(y, y')``. Particles flung far from the target have
    MMD^2 ``E k(y, y') + E k(x, x') > E k(y, y')`` (for kernels vanishing at infinity),
    which trips it unless the flow started that far away; the floor ``E k(y, y') / 2``
    keeps noisy flows started near the target (MMD^2 at the level of sampling noise,
    then a noisy equilibrium several times above it) from tripping it. The history
    then holds ``diverged = {"step", "reason", "mmd2"}``.

    A density flow (its field's ``target == "density"``: ``"svgd"``, ``"ksd"``) takes
    ``y=None`` and records ``ksd2`` in place of ``mmd2``: the V-statistic ``KSD^2`` of the
    particles to the field's ``logp`` (:func:`mmdflow.ksd.ksd2`, base kernel
    ``mmd_kernel``); it stops only on non-finite particles or ``KSD^2`` (there is no
    escape level), with ``diverged = {"step", "reason", "ksd2"}``.

    Args:
      stepper: an object with ``init`` and ``step``.
      x0: ``[n, d]`` initial particles (unused, may be ``None``, when ``state`` is given).
      y: ``[m, d]`` target samples (``None`` for a density flow; ignored by one).
      num_steps: number of steps to take (from ``state``'s step when continuing).
      key: PRNG key for ``stepper.init`` (unused when ``state`` is given).
      record_every: steps between records.
      wx, wy: optional particle / target weights (``wx`` only for a fresh start).
      mmd_kernel: kernel for the recorded MMD^2 (a density flow's KSD^2: its base kernel).
      record_trajectory: also return the particles at every record, ``[R, n, d]``.
      callback: called as ``callback(step, record)`` after each record (progress bars).
      sums: how the recorded MMD^2's kernel sums run (:class:`mmdflow.ops.SumConfig`).
      state: continue from this state (e.g. a previous run's final state or a
        checkpoint) instead of ``stepper.init(x0, key, wx)``.
      history: the history of the run so far (as returned by ``run``, or given to
        ``on_chunk``): new records are appended to it (step 0 is not recorded again,
        wall times continue from its last one; a ``diverged`` entry is dropped). It
        must hold ``trajectory`` when ``record_trajectory``.
      on_chunk: called as ``on_chunk(step, state, history)`` after every compiled
        chunk, where ``history()`` builds the history so far (e.g. for a checkpoint);
        it may raise to stop the run (e.g. ``KeyboardInterrupt`` after a checkpoint).
      divergence_factor: see above; ``None`` turns both divergence checks off.
      chunk_seconds: target wall time of one compiled chunk (> 0).

    Returns:
      ``(final_state, history)`` with history a dict of NumPy arrays: ``step``,
      ``mmd2`` (a density flow: ``ksd2``), ``kinetic``, ``critic``, ``wall_time`` (seconds since start,
      compile time included in the first chunk), ``trajectory`` if requested, and
      ``diverged`` (a dict, see above) only when the run stopped early.
    """
    check_int(None, "num_steps", num_steps, minimum=0)
    check_int(None, "record_every", record_every)
    if divergence_factor is not None and not (
        divergence_factor > 1 and divergence_factor < math.inf
    ):
        raise ValueError(f"run: `divergence_factor` must be > 1 or None; got {divergence_factor}.")
    if not chunk_seconds > 0:
        raise ValueError(f"run: `chunk_seconds` must be > 0; got {chunk_seconds}.")
    if state is None:
        if key is None:
            raise ValueError("run: `key` is required to start a flow (no `state` given).")
        if isinstance(stepper, ParticleFlow):  # the target is known: fields may prepare for it
            state = stepper.init(x0, key, wx, y=y)
        else:
            state = stepper.init(x0, key, wx)
    elif not isinstance(state, FlowState):
        raise ValueError(f"run: `state` must be a FlowState; got {type(state).__name__}.")
    density = is_density_flow(stepper)
    metric = "ksd2" if density else "mmd2"
    if density:  # the field holds its target
        y, wy = None, None
    else:
        y = check_points("y", y, d=state.x.shape[1], other="x0")
    if wy is not None:  # checked here: inside the jitted chunks below it is traced
        normalized_weights("wy", wy, y.shape[0], "y", y.dtype)
    kmmd = mmd_kernel if mmd_kernel is not None else stepper.kernel

    try:
        chunk, measure, escape_level = _compiled(stepper, kmmd, sums, divergence_factor is not None)
    except TypeError:  # an unhashable stepper or kernel: compile for this call only
        chunk, measure, escape_level = _compiled.__wrapped__(
            stepper, kmmd, sums, divergence_factor is not None
        )
    start = int(state.count)
    t0 = time.perf_counter()
    aux = _empty_aux(stepper, state, y, wy)
    state, aux = _replicated_on_mesh((state, aux))  # one compilation of the chunk
    if history is None:
        nan = float("nan")
        hist = {"step": [start], metric: [float(measure(state.x, state.wx, y, wy))]}
        hist.update(kinetic=[nan], critic=[nan], wall_time=[0.0])
        traj = [_host(state.x)] if record_trajectory else None
    else:
        hist = _start_history(history, record_trajectory, start, metric)
        traj = list(np.asarray(history["trajectory"])) if record_trajectory else None
        t0 -= hist["wall_time"][-1]

    def snapshot() -> History:
        out = {name: np.asarray(v) for name, v in hist.items()}
        if record_trajectory:
            out["trajectory"] = np.stack(traj)
        if diverged is not None:
            out["diverged"] = dict(diverged)
        return out

    def record(step):
        rec = {
            "step": step,
            metric: float(measure(state.x, state.wx, y, wy)),
            "kinetic": float(aux["kinetic"]),
            "critic": float(aux["critic"]),
            "wall_time": time.perf_counter() - t0,
        }
        for name, val in rec.items():
            hist[name].append(val)
        if record_trajectory:
            traj.append(_host(state.x))
        return rec

    diverged = None
    if divergence_factor is not None and density:  # no escape level: finite KSD^2 only
        limit, why = math.inf, ""
    elif divergence_factor is not None:
        limit, why = _mmd2_limit(hist["mmd2"][0], float(escape_level(y, wy)), divergence_factor)
    step, end = start, start + num_steps
    per_step = None  # measured seconds per step (the first chunk, 1 step, compiles)
    while step < end:
        target = min((step // record_every + 1) * record_every, end)
        k = 1 if per_step is None else max(1, min(target - step, int(chunk_seconds / per_step)))
        t = time.perf_counter()
        state, aux, done, ok = chunk(state, aux, y, wy, jnp.int32(k))
        done, ok = int(done), bool(ok)
        per_step = max(time.perf_counter() - t, 1e-9) / max(done, 1)
        step += done
        rec = None
        if not ok:
            if hist["step"][-1] != step:
                rec = record(step)
            diverged = {"step": step, "reason": f"non-finite particles at step {step + 1}"}
            diverged[metric] = hist[metric][-1]
        elif step == target:
            rec = record(step)
            if divergence_factor is not None and not rec[metric] <= limit:
                reason = f"MMD^2 rose to {rec[metric]:.3e}, above {limit:.3e} ({why})"
                if density:
                    reason = f"KSD^2 is not finite ({rec[metric]})"
                diverged = {"step": step, "reason": reason, metric: rec[metric]}
        if callback is not None and rec is not None:
            callback(step, rec)
        if on_chunk is not None:
            on_chunk(step, state, snapshot)
        if diverged is not None:
            break
    return state, snapshot()
