"""Generator training along the parametric kernelized (Riemannian) direction (Flax NNX).

The direction itself (variant B of Mroueh & Nguyen 2021, as reconstructed; and
the ``"mmd-gd"`` / ``"grad-penalty"`` baselines) lives in
:mod:`mmdflow.kernelized` and is pure JAX. This module adds the Flax side:
generators, the jitted pure training step (``nnx.split`` / ``nnx.merge`` around
``jax.jit``), an optax optimizer fed with ``-theta_dot`` as the gradient, a
training loop with held-out MMD^2, and exact checkpoint / resume. With an adversarial
``critic`` (:mod:`mmdflow.critics`) the kernel is learned: an MMD GAN (MMD GAN-GP or Scaled
MMD) whose generator steps along any of the directions.

Example:
  >>> import jax, optax
  >>> from flax import nnx
  >>> from mmdflow import kernels, train
  >>> gen = train.MLPGenerator(latent_dim=2, out_dim=2, hidden=(16,), rngs=nnx.Rngs(0))
  >>> tr = train.GeneratorTrainer(gen, optax.sgd(0.5), kernels.Gaussian(1.0), batch_size=32)
  >>> state = tr.init(jax.random.key(0))
  >>> y = jax.random.normal(jax.random.key(1), (500, 2)) + 1.0
  >>> state, metrics = tr.step(state, y)
  >>> sorted(metrics)[:3]
  ['cg_iterations', 'cg_residual', 'critic']
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmdflow import _checkpoint
from mmdflow._checks import check_points
from mmdflow._nets import MLP
from mmdflow.critics import Critic
from mmdflow.kernelized import DIRECTIONS, SOLVERS, direction
from mmdflow.kernels import Kernel
from mmdflow.mmd import mmd2
from mmdflow.ops import SumConfig, check_kernel, check_sum_config, kernel_matvec

#: :meth:`GeneratorTrainer.fit` stops when a held-out MMD^2 exceeds this multiple of the
#: history's first one. Measured with the CLI defaults (every direction on 8gaussians and
#: a 5x5 grid of Gaussians, kernelized and mmd-gd on 7 other shapes and digits; 500 steps,
#: evaluated every 25): healthy runs peak at 1.23x their first value (mmd-gd on
#: "gaussian", then falls to 0.15x), 1.08x (grad-penalty on 8gaussians), else below 0.9x.
DIVERGENCE_FACTOR = 2.0
#: ... or when the generated samples' mean kernel value with the held-out samples (over the
#: target's own) falls below this fraction of its first value: they left the target, every
#: kernel value underflows and the MMD^2 saturates, often *below* its first value, so the
#: rise test misses it (``lr=1e6`` on 8gaussians: MMD^2 1.76 -> 1.21, overlap 0.97 -> 0).
#: Healthy mmd-gd runs dip to 4.4e-5 ("heart") and recover; stuck ones sit at 2.6e-10
#: (mmd-gd on "swissroll", MMD^2 flat for 500 steps): this is about their geometric mean.
ESCAPE_FRACTION = 1e-7
#: per-step history lists of a trainer with an adversarial critic: the learned kernel's
#: unbiased minibatch MMD^2 and the critic's penalty term after its last update of the step
CRITIC_METRICS = ("critic_mmd2", "critic_penalty")

__all__ = [
    "DIVERGENCE_FACTOR",
    "ESCAPE_FRACTION",
    "CRITIC_METRICS",
    "MLPGenerator",
    "ConvGenerator",
    "TrainState",
    "GeneratorTrainer",
    "mode_coverage",
    "save_checkpoint",
    "load_checkpoint",
]


class MLPGenerator(MLP):
    """MLP generator ``z [M, latent_dim] -> [M, out_dim]``."""

    def __init__(
        self,
        latent_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (128, 128),
        *,
        activation: Callable[[jax.Array], jax.Array] = nnx.relu,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__(latent_dim, out_dim, hidden, activation=activation, rngs=rngs)
        self.latent_dim = latent_dim


class ConvGenerator(nnx.Module):
    """Small conv generator for 8x8 images: ``z -> [M, 64]`` in ``(0, 1)``.

    Dense to ``4x4xC``, a stride-2 transposed conv to ``8x8``, a 3x3 conv to one
    channel, sigmoid; flattened row-major like scikit-learn's digits.
    """

    def __init__(self, latent_dim: int = 16, channels: int = 32, *, rngs: nnx.Rngs) -> None:
        self.fc = nnx.Linear(latent_dim, 4 * 4 * channels, rngs=rngs)
        self.up = nnx.ConvTranspose(channels, channels // 2, (4, 4), strides=(2, 2), rngs=rngs)
        self.conv = nnx.Conv(channels // 2, 1, (3, 3), rngs=rngs)
        self.channels = channels
        self.latent_dim = latent_dim

    def __call__(self, z: jax.Array) -> jax.Array:
        h = nnx.relu(self.fc(z)).reshape(z.shape[0], 4, 4, self.channels)
        h = nnx.relu(self.up(h))
        return nnx.sigmoid(self.conv(h)).reshape(z.shape[0], 64)


class TrainState(NamedTuple):
    """Generator parameters, optimizer state, PRNG key, step counter and critic state.

    ``critic`` is ``None`` for a fixed kernel, else the adversarial critic's
    ``(params, opt_state)`` (see :class:`mmdflow.critics.Critic`).
    """

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array
    critic: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class GeneratorTrainer:
    """Trains a Flax generator by descending along a kernel-discrepancy direction.

    Attributes:
      generator: an ``nnx.Module`` mapping ``[M, latent_dim] -> [M, d]``; needs a
        ``latent_dim`` attribute (or pass ``latent_dim``).
      optimizer: optax transformation; receives ``-theta_dot`` as the gradient
        (``optax.sgd(lr)`` is the faithful Euler scheme).
      kernel: the MMD kernel of the generator's direction; with a ``critic``, the fixed
        kernel of the held-out evaluation only.
      kind: ``"kernelized"`` (variant B), ``"param-sobolev"`` (variant A),
        ``"grad-penalty"`` (variant C) or ``"mmd-gd"``; see :mod:`mmdflow.kernelized`.
      reg: ridge ``lambda``.
      batch_size: latent and target minibatch size per step.
      cg_tol, cg_maxiter: CG stopping rule (relative residual, iteration cap; CG starts
        from zero). The default cap of 20 iterations is *truncated* CG for
        ``"kernelized"``: on the 8-Gaussians benchmark CG needs ~50-70 iterations for
        ``1e-4`` and stopping at 20 gives a lower held-out MMD^2 at equal training time
        than a cap of 50 or 10 (``benchmarks/RESULTS.md``). Truncated CG from zero is
        still a descent direction (:func:`mmdflow.kernelized.cg`). Also used by the
        sample-space solves of ``"param-sobolev"`` / ``"grad-penalty"`` when ``solver``
        resolves to CG.
      solver: ``"auto"``, ``"cholesky"`` or ``"cg"`` for the ``[M d, M d]`` systems of
        ``"param-sobolev"`` / ``"grad-penalty"`` (``"auto"``: Cholesky up to
        ``mmdflow.sobolev.CHOLESKY_MAX_SIZE``). Must be ``"auto"``/``"cg"`` otherwise.
      latent_dim: overrides ``generator.latent_dim``.
      sums: how the direction's kernel sums run (:class:`mmdflow.ops.SumConfig`); e.g.
        ``SumConfig(mesh=sharding.make_mesh())`` runs each step data-parallel over a device
        mesh (latent batch sharded, kernel sums as collectives).
    """

    generator: nnx.Module
    optimizer: optax.GradientTransformation
    kernel: Kernel
    kind: str = "kernelized"
    reg: float = 0.1
    batch_size: int = 256
    cg_tol: float = 1e-4
    cg_maxiter: int = 20
    solver: str = "auto"
    latent_dim: int | None = None
    sums: SumConfig | None = None
    critic: Critic | None = None

    def __post_init__(self):
        check_kernel(self.kernel)
        check_sum_config("GeneratorTrainer", self.sums)
        if self.critic is not None and not isinstance(self.critic, Critic):
            raise ValueError(
                f"`critic` must be an mmdflow.critics.Critic or None; got "
                f"{type(self.critic).__name__}."
            )
        if self.kind not in DIRECTIONS:
            raise ValueError(f"`kind` must be one of {DIRECTIONS}; got {self.kind!r}.")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 2):
            raise ValueError(f"`batch_size` must be an int >= 2; got {self.batch_size!r}.")
        if not (np.isfinite(self.reg) and self.reg > 0):
            raise ValueError(f"`reg` must be finite and > 0; got {self.reg!r}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"`solver` must be one of {SOLVERS}; got {self.solver!r}.")
        if self.solver == "cholesky" and self.kind not in ("param-sobolev", "grad-penalty"):
            raise ValueError(
                f"`solver='cholesky'` applies to kind 'param-sobolev' / 'grad-penalty' only; "
                f"got kind={self.kind!r}."
            )
        if not (isinstance(self.cg_maxiter, int) and self.cg_maxiter >= 1):
            raise ValueError(f"`cg_maxiter` must be an int >= 1; got {self.cg_maxiter!r}.")
        if not (np.isfinite(self.cg_tol) and self.cg_tol >= 0):
            raise ValueError(f"`cg_tol` must be finite and >= 0; got {self.cg_tol!r}.")
        graphdef, params = nnx.split(self.generator)
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_params0", params)
        dz = self.latent_dim if self.latent_dim is not None else self.generator.latent_dim
        object.__setattr__(self, "_dz", int(dz))
        object.__setattr__(self, "_step", jax.jit(self._step_impl))

    @property
    def dz(self) -> int:
        """The latent dimension."""
        return self._dz

    def gen_fn(self, params: Any, z: jax.Array) -> jax.Array:
        """Pure generator function ``(params, z) -> samples``."""
        return nnx.merge(self._graphdef, params)(z)

    def init(self, key: jax.Array, params: Any = None) -> TrainState:
        """Fresh state (the generator's initial parameters unless ``params`` is given)."""
        params = self._params0 if params is None else params
        critic = None if self.critic is None else self.critic.init()
        step = jnp.zeros((), jnp.int32)
        return TrainState(params, self.optimizer.init(params), key, step, critic)

    def _batch(self, kz: jax.Array, ky: jax.Array, y_data: jax.Array):
        """A latent and a target minibatch (``batch_size`` rows each) from two keys."""
        z = jax.random.normal(kz, (self.batch_size, self._dz))
        return z, y_data[jax.random.randint(ky, (self.batch_size,), 0, y_data.shape[0])]

    def _critic_steps(self, state: TrainState, key: jax.Array, y_data: jax.Array):
        """``critic.steps`` critic updates on fresh minibatches; aux of the last one."""

        def one(carry, k):
            cparams, copt = carry
            kz, ky, kp = jax.random.split(k, 3)
            z, y = self._batch(kz, ky, y_data)
            x = self.gen_fn(state.params, z)
            cparams, copt, aux = self.critic.update(cparams, copt, x, y, kp)
            return (cparams, copt), aux

        carry, aux = jax.lax.scan(one, state.critic, jax.random.split(key, self.critic.steps))
        return carry, jax.tree.map(lambda a: a[-1], aux)

    def _step_impl(self, state: TrainState, y_data: jax.Array):
        kernel, extra, critic = self.kernel, {}, state.critic
        if self.critic is None:
            key, kz, ky = jax.random.split(state.key, 3)
        else:
            key, kz, ky, kc = jax.random.split(state.key, 4)
            critic, aux = self._critic_steps(state, kc, y_data)
            kernel = self.critic.kernel(critic[0])
            extra = {"critic_mmd2": aux["mmd2"], "critic_penalty": aux["penalty"]}
        z, y = self._batch(kz, ky, y_data)
        v, info = direction(
            self.gen_fn,
            state.params,
            z,
            y,
            kernel,
            self.reg,
            kind=self.kind,
            cg_tol=self.cg_tol,
            cg_maxiter=self.cg_maxiter,
            solver=self.solver,
            sums=self.sums,
        )
        grads = jax.tree.map(jnp.negative, v)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        leaves = jax.tree.leaves((params, critic))
        finite = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in leaves]))
        new = TrainState(params, opt_state, key, state.step + 1, critic)
        return new, {**info, **extra, "finite": finite}

    def step(self, state: TrainState, y_data: jax.Array) -> tuple[TrainState, dict[str, Any]]:
        """One jitted training step on a minibatch drawn from ``y_data [N, d]``.

        Returns:
          ``(state, info)``: ``info`` holds the direction's diagnostics (batch ``mmd2``,
          ``velocity_norm``, ``critic``, ``cg_iterations``, ...) and ``finite``, whether
          every new parameter is finite.
        """
        y_data = check_points("y_data", y_data)
        return self._step(state, y_data)

    def sample(self, state: TrainState, key: jax.Array, n: int) -> jax.Array:
        """``n`` generated samples ``[n, d]``."""
        z = jax.random.normal(key, (n, self._dz))
        return self.gen_fn(state.params, z)

    def fit(
        self,
        state: TrainState,
        y_train: jax.Array,
        num_steps: int,
        *,
        y_eval: jax.Array | None = None,
        eval_every: int = 50,
        eval_samples: int = 2000,
        eval_key: jax.Array | None = None,
        callback: Callable[[int, dict], None] | None = None,
        history: dict[str, Any] | None = None,
        on_step: Callable[[TrainState, dict[str, Any]], None] | None = None,
        divergence_factor: float | None = DIVERGENCE_FACTOR,
        stop_on_divergence: bool = True,
    ) -> tuple[TrainState, dict[str, Any]]:
        """Runs ``num_steps`` steps; records per-step metrics and held-out MMD^2.

        Divergence: the run has diverged when a step leaves a non-finite parameter, a
        held-out MMD^2 is non-finite (``"non-finite"``), a held-out MMD^2 exceeds
        ``divergence_factor`` times the history's first one when that one is positive
        (``"rise"``), or the generated samples left the target: their mean kernel value
        with the held-out samples (relative to the target's own, ``eval_overlap``) fell
        below :data:`ESCAPE_FRACTION` times its first value (``"escaped"``; far from the
        target every kernel value underflows, the MMD^2 saturates, possibly *below* its
        first value, and the direction vanishes). ``history["diverged"]`` then describes
        the first such event and, with ``stop_on_divergence``, ``fit`` stops there and
        returns the last state whose parameters and samples are finite (the state before
        the step for ``"non-finite"``, the evaluated state otherwise) with the history up
        to that state.

        Args:
          state: The state to start from (e.g. :meth:`init`, or a restored checkpoint).
          y_train: ``[N, d]`` training samples (minibatches are drawn from them).
          num_steps: Steps to run.
          y_eval: ``[N', d]`` held-out samples for the held-out MMD^2 (default ``y_train``).
          eval_every: Evaluate at every multiple of this step.
          eval_samples: Generated samples per evaluation (fixed latents).
          eval_key: Key of the evaluation latents (default ``jax.random.key(12345)``); keep
            it when continuing a history.
          callback: Called after every step as ``callback(step, record)``, ``record``
            holding the last entry of every history list.
          history: A history returned by an earlier ``fit`` (or restored with
            :func:`load_checkpoint`) to continue from ``state``: its lists are copied and
            extended, and the held-out MMD^2 of ``state`` is not recorded twice.
          on_step: Called after every step (before ``callback``) as ``on_step(state,
            history)`` with the new state and the history so far, e.g. to write a
            checkpoint with :func:`save_checkpoint`. The history is live: copy what you
            keep. Not called for a step that diverged while ``stop_on_divergence``.
          divergence_factor: The factor of the rise test (``None``: no rise test; the
            other tests stay); see :data:`DIVERGENCE_FACTOR`.
          stop_on_divergence: Stop at the first divergence (``False``: only record it).

        Returns:
          ``(state, history)``: history has per-step lists (``step``, ``mmd2`` on the
          batch, ``velocity_norm``, ``critic``, ``cg_iterations``, ``time``; with an
          adversarial critic also :data:`CRITIC_METRICS`), evaluation
          lists ``eval_step``, ``eval_mmd2`` (unbiased, ``eval_samples`` generated samples
          vs ``y_eval`` with fixed latents) and ``eval_overlap`` (the generated samples'
          mean kernel value with ``y_eval`` over that of ``y_eval`` with itself), and
          ``diverged``: ``None``, or a dict with the ``step`` where divergence was
          detected, its ``kind`` (``"non-finite"``, ``"rise"`` or ``"escaped"``) and a
          one-line ``reason``.
        """
        y_train = check_points("y_train", y_train)
        y_eval = y_train if y_eval is None else check_points("y_eval", y_eval, d=y_train.shape[1])
        if divergence_factor is not None and not (
            np.isfinite(divergence_factor) and divergence_factor > 1
        ):
            raise ValueError(
                f"`divergence_factor` must be finite and > 1 (or None); got {divergence_factor!r}."
            )
        ekey = jax.random.key(12345) if eval_key is None else eval_key
        z_eval = jax.random.normal(ekey, (eval_samples, self._dz))

        ones = jnp.full((y_eval.shape[0],), 1.0 / y_eval.shape[0], y_eval.dtype)
        kyy = float(jnp.mean(kernel_matvec(self.kernel, y_eval, y_eval, ones)))

        # the held-out samples and latents are arguments, not closed-over constants: XLA
        # would constant-fold their kernel sums at every compilation (seconds at N' = 400)
        @jax.jit
        def _evaluate(params, z_eval, y_eval, ones):
            x = self.gen_fn(params, z_eval)
            overlap = jnp.mean(kernel_matvec(self.kernel, x, y_eval, ones)) / kyy
            return mmd2(x, y_eval, self.kernel, estimator="unbiased"), overlap

        def evaluate(params):
            return _evaluate(params, z_eval, y_eval, ones)

        floats = ("mmd2", "velocity_norm", "critic")
        floats += () if self.critic is None else CRITIC_METRICS
        names = ("step", *floats, "cg_iterations", "time")
        hist: dict[str, Any] = {k: list((history or {}).get(k, [])) for k in names}
        for k in ("eval_step", "eval_mmd2", "eval_overlap"):
            hist[k] = list((history or {}).get(k, []))
        # a history written before overlaps were recorded: theirs are unknown
        hist["eval_overlap"][:0] = [math.nan] * (len(hist["eval_step"]) - len(hist["eval_overlap"]))
        hist["diverged"] = None
        lists = [k for k in hist if k != "diverged"]

        def divergence(step: int, value: float | None, overlap: float = 1.0) -> dict | None:
            """The divergence seen at ``step`` (its held-out MMD^2 and overlap), or None."""
            if value is None:
                reason = f"non-finite parameters after step {step}"
                return {"step": step, "kind": "non-finite", "reason": reason}
            if not np.isfinite(value):
                reason = f"non-finite held-out MMD^2 ({value}) at step {step}"
                return {"step": step, "kind": "non-finite", "reason": reason}
            first = hist["eval_mmd2"][0]
            if divergence_factor is not None and first > 0 and value > divergence_factor * first:
                reason = (
                    f"held-out MMD^2 rose to {value:.3e} at step {step}, above "
                    f"{divergence_factor:g}x its first value {first:.3e} (step "
                    f"{hist['eval_step'][0]})"
                )
                return {"step": step, "kind": "rise", "reason": reason}
            ref = next((o for o in hist["eval_overlap"] if np.isfinite(o) and o > 0), None)
            if ref is not None and overlap < ESCAPE_FRACTION * ref:
                reason = (
                    f"the generated samples left the target at step {step}: their mean kernel "
                    f"value with the held-out samples fell to {overlap:.2e} of the target's own, "
                    f"below {ESCAPE_FRACTION:g}x its first value {ref:.2e}"
                )
                return {"step": step, "kind": "escaped", "reason": reason}
            return None

        def record_eval(st) -> dict | None:
            step = int(st.step)
            value, overlap = (float(v) for v in evaluate(st.params))
            hist["eval_step"].append(step)
            hist["eval_mmd2"].append(value)
            hist["eval_overlap"].append(overlap)
            return divergence(step, value, overlap)

        step0 = int(state.step)
        if step0 % eval_every == 0 and step0 not in hist["eval_step"][-1:]:
            hist["diverged"] = record_eval(state)
        if hist["diverged"] is not None and stop_on_divergence:
            return state, hist
        for _ in range(num_steps):
            lengths = {k: len(hist[k]) for k in lists}
            t0 = time.perf_counter()
            new, info = self.step(state, y_train)
            info = jax.device_get(info)
            hist["time"].append(time.perf_counter() - t0)
            step = int(new.step)
            hist["step"].append(step)
            for k in floats:
                hist[k].append(float(info[k]))
            hist["cg_iterations"].append(int(info["cg_iterations"]))
            event = None if bool(info["finite"]) else divergence(step, None)
            if step % eval_every == 0:
                seen = record_eval(new)
                event = event or seen
            if event is not None and hist["diverged"] is None:
                hist["diverged"] = event
                if stop_on_divergence:
                    if event["kind"] == "non-finite":  # back to the last finite state
                        for k in lists:
                            del hist[k][lengths[k] :]
                        return state, hist
                    return new, hist
            state = new
            if on_step is not None:
                on_step(state, hist)
            if callback is not None:
                callback(step, {k: hist[k][-1] for k in lists if hist[k]})
        return state, hist


def mode_coverage(
    samples: np.ndarray | jax.Array,
    centers: np.ndarray | jax.Array,
    std: float,
    *,
    radius: float = 3.0,
    min_count: int = 20,
) -> tuple[int, float]:
    """Mode coverage for mixtures: ``(modes covered, fraction of high-quality samples)``.

    A sample is high quality if it lies within ``radius * std`` of a center; a mode
    is covered if at least ``min_count`` high-quality samples are assigned to it.
    """
    s = np.asarray(samples, np.float64)
    c = np.asarray(centers, np.float64)
    d = np.sqrt(((s[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    nearest = d.argmin(1)
    good = d.min(1) <= radius * std
    counts = np.bincount(nearest[good], minlength=len(c))
    return int((counts >= min_count).sum()), float(good.mean())


def save_checkpoint(
    path: str | os.PathLike,
    state: TrainState,
    meta: dict | None = None,
    *,
    history: dict[str, Any] | None = None,
) -> None:
    """Writes ``state`` (all leaves, including the PRNG key) atomically to ``path`` (.npz).

    Args:
      path: Destination ``.npz``.
      state: The training state.
      meta: JSON-serialisable metadata (returned by :func:`load_checkpoint`).
      history: A :meth:`GeneratorTrainer.fit` history to store with it (its lists,
        exactly), so that ``fit(..., history=...)`` can continue it after a restore.
    """
    extra = {}
    for k, v in (history or {}).items():
        if isinstance(v, list):
            extra[_HISTORY + k] = np.asarray(v, dtype=np.int64 if k in _INT_LISTS else np.float64)
    _checkpoint.save(path, state, meta, **extra)


def load_checkpoint(path: str | os.PathLike, like: TrainState) -> tuple[TrainState, dict]:
    """Restores a :func:`save_checkpoint` file into the structure of ``like``.

    Returns:
      ``(state, meta)``; ``meta["history"]`` holds the stored history (lists of Python
      numbers) when one was saved.
    """
    state, meta = _checkpoint.load(path, like)
    extra = meta.pop("extra", {})
    hist = {k[len(_HISTORY) :]: v.tolist() for k, v in extra.items() if k.startswith(_HISTORY)}
    if hist:
        meta["history"] = hist
    return state, meta


_HISTORY = "history."
_INT_LISTS = ("step", "cg_iterations", "eval_step")
