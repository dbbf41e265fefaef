"""The ``mmdflow flow`` defaults on hard cases (issue 13): far sources, neural on letter.

The measurements behind the defaults are in ``benchmarks/flow_defaults.py`` and
``benchmarks/RESULTS.md`` ("Flow defaults"); these are small, fast versions of its cases.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cli import run_subprocess
from _scripts import load_benchmark

from mmdflow import cli, flows, kernels
from mmdflow.cli import _common as C
from mmdflow.fields import _neural as FN
from mmdflow.fields import _sobolev as FS


def _far_source(n: int, d: int, seed: int = 0):
    """The issue-13 case: ``N(0, I) -> N(2, I)``, float32, one ``default_rng``."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.normal(size=(n, d)) + 2.0).astype(np.float32)
    return x0, y


def _nearest(a, b):
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def _mixture_mmd2(x, y, bw):
    """Biased float64 MMD^2 under the issue's mixture (median x {1/8, 1/4, 1/2, 1})."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_k(a, b):
        d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)
        return sum(np.exp(-d2 / (2 * (bw * f) ** 2)).mean() for f in (0.125, 0.25, 0.5, 1.0))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


# --------------------------------------------------------------------------- max_move


def test_max_move_caps_each_particle_and_keeps_direction():
    x0, y = _far_source(40, 3)
    k = kernels.Gaussian(0.5)
    free = flows.make("sobolev", k, step_size=1.0, reg=1e-3)
    capped = flows.make("sobolev", k, step_size=1.0, reg=1e-3, max_move=0.05)
    s0 = free.init(jnp.asarray(x0), jax.random.key(0))
    (a, aux_a), (b, aux_b) = jax.jit(free.step)(s0, y), jax.jit(capped.step)(s0, y)
    da, db = np.asarray(a.x - s0.x), np.asarray(b.x - s0.x)
    na, nb = np.linalg.norm(da, axis=1), np.linalg.norm(db, axis=1)
    # float32: the displacement is the witness gradient of an ill-conditioned solve (reg 1e-3),
    # recomputed by XLA in the fusions of the cap's scale, of the update and of the kinetic
    # energy, whose roundings differ by up to ~1e-4 of a move (7e-5 with XLA's legacy CPU
    # emitters); an uncapped move is 29x the cap
    tol = 2e-4
    assert na.max() > 0.05 and nb.max() <= 0.05 * (1 + tol)
    short = na <= 0.05
    np.testing.assert_allclose(db[short], da[short], rtol=1e-6)  # short moves untouched
    cos = (da * db).sum(1) / (na * nb)
    np.testing.assert_allclose(cos[~short], 1.0, rtol=1e-5)  # long ones shortened only
    np.testing.assert_allclose(float(aux_b["kinetic"]), (nb**2).mean(), rtol=tol)
    assert float(aux_b["kinetic"]) < float(aux_a["kinetic"])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_max_move_must_be_positive(bad):
    with pytest.raises(ValueError, match="max_move"):
        flows.make("sobolev", kernels.Gaussian(1.0), max_move=bad)


def test_default_max_move_is_a_fraction_of_the_bandwidth():
    assert 0 < FS.MAX_MOVE <= 0.5


# --------------------------------------------------------------------------- far source


@pytest.mark.slow
def test_far_source_3d_cli_leaves_no_particle_behind_or_flung(tmp_path, capsys):
    """Issue 13: 300 points, N(0, I) -> N(2, I) in 3-D, CLI defaults (here 100 steps).

    Before the fix, the first step flung 12 particles of the source's leading edge to
    radius 15-30 (the narrow mixture components' critic gradient ~ 1/q there), where
    every kernel term vanishes: MMD^2 stalled at ~170x lower with 12 particles > 2
    target spacings from any target sample. With the step capped at
    ``MAX_MOVE * bandwidth`` none is (the farthest: 0.4 spacings), and MMD^2 falls
    1,600x in 100 steps (143x in 150 without the cap).
    """
    x0, y = _far_source(300, 3)
    src, tgt, out = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "out"
    np.save(src, x0)
    np.save(tgt, y)
    rc = cli.main(
        ["flow", "--source", str(src), "--target", str(tgt), "--steps", "100"]
        + ["--out", str(out), "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    x = np.load(out / "particles.npy")
    spacing = _nearest(_far_source(300, 3, seed=1)[1], y).max()  # the target's own gaps
    gap = _nearest(x, y) / spacing
    assert gap.max() < 2.0, np.sort(gap)[-5:]
    assert m["summary"]["mmd2_reduction"] > 500
    assert m["settings"]["max_move"] == pytest.approx(FS.MAX_MOVE)


@pytest.mark.parametrize("d", [5, 10])
def test_far_source_library_defaults(d):
    """The CLI's stepper (median bandwidth, mixture, RFF redrawn) on the far source in 5-D/10-D."""
    x0, y = _far_source(200, d)
    bw = float(kernels.median_bandwidth(x0, y))
    k = kernels.MixtureRBF(np.asarray([bw * f for f in C.MIXTURE_FACTORS], np.float32))
    kw = flows.FLOWS["sobolev"].defaults_for(k, bw, 200, d, None)
    assert kw["num_features"] and kw["resample_features"]  # n * d > EXACT_MAX_SIZE
    stepper = flows.make("sobolev", **kw)
    state, _ = jax.jit(lambda s: flows.scan(stepper, s, jnp.asarray(y), 100))(
        stepper.init(jnp.asarray(x0), jax.random.key(0))
    )
    x = np.asarray(state.x, np.float64)
    spacing = _nearest(_far_source(200, d, seed=1)[1], y).max()
    assert (_nearest(x, y) / spacing).max() < 2.0
    assert _mixture_mmd2(x0, y, bw) / _mixture_mmd2(x, y, bw) > 50


# --------------------------------------------------------------------------- benchmark


def test_flow_defaults_benchmark_quick(tmp_path):
    bench = load_benchmark("flow_defaults")
    out = tmp_path / "d.json"
    res = bench.main(["--quick", "--cases", "far3d", "--configs", "default", "--out", str(out)])
    assert json.loads(out.read_text())["metadata"]["schema"] == bench.SCHEMA
    recs = res["records"]
    assert [(r["case"], r["setting"]) for r in recs] == [("far3d", "default")]
    assert recs[0]["config"]["max_move"] == FS.MAX_MOVE
    assert bench.settings_for("sobolev", "old", {})["max_move"] is None
    assert all(np.isfinite(r["mmd2_end"]) and r["reduction"] > 1 for r in recs)
    assert "| far3d | default |" in bench.markdown_table(res["summary"])


# --------------------------------------------------------------------------- neural


@pytest.mark.slow
def test_neural_letter_cli_defaults_do_not_stall(tmp_path):
    """Issue 13: ``--method neural-sobolev --target letter`` stalled at 12x (1000 points).

    The critic is normalised, so particles move at about ``step_size`` per step until the
    end; with ``STEP_FACTOR = 0.025`` that jitter stalls MMD^2 (here, 300 points and
    150 steps: 16x lower). With 0.005: 38x, still decreasing.
    """
    out = tmp_path / "out"
    # a run-bound run: in a subprocess at XLA optimisation level 2 (18 s -> 13 s)
    args = ["--method", "neural-sobolev", "--target", "letter", "--n", 300, "--steps", 150]
    rc, _, err = run_subprocess("flow", *args, "--out", out, "--quiet")
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    mmd2 = np.asarray(m["history"]["mmd2"])
    assert m["summary"]["mmd2_reduction"] > 25
    assert mmd2[-1] <= 1.2 * mmd2.min()
    assert m["settings"]["step_size"] == pytest.approx(FN.STEP_FACTOR * m["settings"]["bandwidth"])
