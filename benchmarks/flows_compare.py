"""Benchmark: every flow of the registry on the same problems, at its ``defaults_for`` (issue 16).

Every flow of ``mmdflow.flows.FLOWS`` (a new one is picked up), each at the defaults
``mmdflow flow`` uses (``FLOWS[name].defaults_for(kernel, bandwidth, n, d, key)``), with a
fixed step budget per problem:

* sample flows (fields without ``target = "density"``) on :data:`SAMPLE_PROBLEMS`: two 2-D
  pairs (gaussian -> 8gaussians, moons -> rings), an 8-D Gaussian mixture (4 components
  at 3 e_k, std 0.5, from N(0, I_8)) and scikit-learn's digits (64-D, ``mmdflow.data``; the
  source is a Gaussian with the digits' per-pixel mean and standard deviation). Kernel: the
  command line's mixture of Gaussians at (1/8, 1/4, 1/2, 1) x the median distance of source
  and target pooled; MMD^2 (biased, this kernel, float32 as ``flows.run`` records it) to the
  flow's target samples.
* density flows (``svgd``, ``ksd``) on the built-in densities :data:`DENSITY_PROBLEMS`
  (mixture, banana, funnel; 2-D) from N(0, I): one Gaussian at Liu & Wang's median rule on
  exact samples (``mmdflow.cli._density``, as ``mmdflow flow --density``). KSD^2 (V-statistic,
  this kernel) and, on the recorded snapshots, the MMD^2 (this kernel) to
  :data:`REF_SAMPLES` exact samples; at the end the largest absolute errors of the mean and
  covariance entries against the exact samples. ``iid_mmd2``: the MMD^2 of ``n`` fresh exact
  samples to the same reference (the level of a perfect sampler).

Reported per run: the final metric and its reduction, the steps and wall time (compilation
excluded: a warm-up run of one step compiles first; ``compile_s``) at which the metric first
fell ``THRESHOLDS`` times below its start (``None``: not within the budget), and per flow the
time per step against ``n`` (a jitted ``flows.scan`` of ``SCAN_STEPS`` steps; gaussian ->
8gaussians, density flows on the banana) with the fitted exponent of ``t ~ n^a``.
Wall times are from a shared machine: compare within one run.

Usage:
  python benchmarks/flows_compare.py            # ~13 min on 2 loaded cores
  python benchmarks/flows_compare.py --quick    # < 60 s: 64 particles, 20 steps, two problems,
                                                # time per step of mmd and svgd only
  python benchmarks/flows_compare.py --flows mmd svgd --n 200 --out /tmp/x.json

Writes JSON (``benchmarks/results/flows_compare_<platform>[_quick].json``), a plot next to it
(``.png``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import _common as common
import jax
import numpy as np

from mmdflow import data, densities, flows, kernels, mmd2
from mmdflow.cli._density import bandwidth as density_bandwidth
from mmdflow.cli._density import moment_errors

SCHEMA = "mmdflow.bench.flows_compare/1"
#: the command line's mixture kernel: these multiples of the median distance
FACTORS = (0.125, 0.25, 0.5, 1.0)
#: metric reductions (start / value) whose first step and wall time are reported
THRESHOLDS = (10, 100, 1000)
#: exact samples of a density: the reference of the MMD^2 and of the moment errors
REF_SAMPLES = 2000
#: steps per timed scan in the time-per-step measurement
SCAN_STEPS = 5


def _mixture_8d() -> densities.GaussianMixture:
    means = 3.0 * np.eye(8)[:4]
    return densities.GaussianMixture(means=means, scales=(0.5,) * 4)


def _digits_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    y, _ = data.digits(n, seed=seed + 1)
    full, _ = data.digits()
    rng = np.random.default_rng(seed)
    x0 = full.mean(0) + full.std(0) * rng.standard_normal((n, 64))
    return x0.astype(np.float32), y.astype(np.float32)


def _shape_pair(src: str, tgt: str) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    return lambda n, seed: (data.sample(src, n, seed=seed), data.sample(tgt, n, seed=seed + 1))


def _mixture_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x0 = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    return x0, np.asarray(_mixture_8d().sample(jax.random.key(seed + 1), n), np.float32)


#: name -> ``(n, seed) -> (source [n, d], target [n, d])`` (float32)
SAMPLE_PROBLEMS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray]]] = {
    "gaussian->8gaussians": _shape_pair("gaussian", "8gaussians"),
    "moons->rings": _shape_pair("moons", "rings"),
    "mixture-8d": _mixture_pair,
    "digits-64d": _digits_pair,
}
#: the density flows' targets: names of ``mmdflow.densities.DENSITIES`` (2-D)
DENSITY_PROBLEMS = ("mixture", "banana", "funnel")
#: the sizes: particles (= target samples), step budget, the n of the time-per-step fit
FULL = {"n": 500, "steps": 400, "scaling_n": (250, 500, 1000, 2000)}
QUICK = {"n": 64, "steps": 20, "scaling_n": (32, 64)}
QUICK_PROBLEMS = ("gaussian->8gaussians", "banana")
#: ``--quick`` fits the time per step of these flows only (compilation dominates it)
QUICK_SCALING = ("mmd", "svgd")
#: the time-per-step sweep skips an ``n`` whose step is predicted (``x (n / n_prev)^2``) slower
MAX_STEP_S = 2.0


def takes(name: str, density: bool) -> bool:
    """Whether flow ``name`` of the registry moves toward a density (``density``) or toward
    samples (``srmmd`` does both: :func:`mmdflow.flows.targets`)."""
    return ("density" if density else "samples") in flows.targets(name)


def make_problem(name: str, n: int, seed: int = 0) -> dict:
    """The inputs of problem ``name`` at ``n`` points.

    Returns:
      A dict with ``x0`` (source), ``y`` (target samples; ``None`` for a density),
      ``kernel``, ``bandwidth``, ``logp`` (a density's; else ``None``), ``ref`` (exact
      samples of a density) and ``iid_mmd2`` (a density: ``n`` fresh exact samples to
      ``ref``).
    """
    if name in SAMPLE_PROBLEMS:
        x0, y = SAMPLE_PROBLEMS[name](n, seed)
        bw = float(kernels.median_bandwidth(x0, y))
        k = kernels.MixtureRBF(np.asarray([bw * f for f in FACTORS], np.float32))
        return {"x0": x0, "y": y, "kernel": k, "bandwidth": bw, "logp": None, "ref": None}
    p = densities.DENSITIES[name]
    x0 = np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)
    ref = np.asarray(p.sample(jax.random.key(seed + 1), REF_SAMPLES), np.float32)
    bw = density_bandwidth(ref[:n])  # as `mmdflow flow --density` (its n exact samples)
    k = kernels.Gaussian(bw)
    iid = float(mmd2(p.sample(jax.random.key(seed + 2), n), ref, k))
    return {"x0": x0, "y": None, "kernel": k, "bandwidth": bw, "logp": p, "ref": ref} | {
        "iid_mmd2": iid
    }


def make_flow(name: str, problem: dict, n: int, d: int):
    """Flow ``name`` at ``defaults_for`` the problem's kernel and bandwidth (``mmdflow flow``'s)."""
    cls = flows.FLOWS[name]
    density = {} if problem["logp"] is None else {"logp": problem["logp"]}
    kw = cls.defaults_for(
        problem["kernel"], problem["bandwidth"], n, d, jax.random.key(2), **density
    )
    return flows.make(name, **kw)


def _first_below(values, start: float, factor: float) -> int | None:
    hit = np.nonzero(np.asarray(values, np.float64) <= start / factor)[0]
    return int(hit[0]) if hit.size else None


def run_one(
    flow_name: str,
    problem_name: str,
    n: int,
    steps: int,
    seed: int = 0,
    keep_particles: bool = False,
) -> dict:
    """One flow on one problem: the metric history, thresholds, final errors, wall times.

    Args:
      flow_name: a key of ``mmdflow.flows.FLOWS``.
      problem_name: a key of :data:`SAMPLE_PROBLEMS` or a name of :data:`DENSITY_PROBLEMS`.
      n: particles (and target samples).
      steps: the step budget.
      seed: seed of the inputs and of the flow.
      keep_particles: also return the source, the final particles and the target (or
        exact samples) as NumPy arrays (``x0``, ``x``, ``target``; not JSON-ready).

    Returns:
      The record (see the module docstring).
    """
    prob = make_problem(problem_name, n, seed)
    x0, y, k = prob["x0"], prob["y"], prob["kernel"]
    flow = make_flow(flow_name, prob, n, x0.shape[1])
    density = prob["logp"] is not None
    record_every = max(1, steps // 40)
    kw = {"mmd_kernel": k, "record_every": record_every}
    t = time.perf_counter()  # warm-up: compiles the chunk and the measurement (cached)
    flows.run(flow, x0, y, num_steps=1, key=jax.random.key(seed), **kw)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    state, hist = flows.run(
        flow, x0, y, num_steps=steps, key=jax.random.key(seed), record_trajectory=density, **kw
    )
    wall = time.perf_counter() - t
    rec = {
        "flow": flow_name,
        "problem": problem_name,
        "kind": "density" if density else "samples",
        "n": n,
        "d": int(x0.shape[1]),
        "steps_budget": steps,
        "steps_done": int(state.count),
        "bandwidth": prob["bandwidth"],
        "step_size": float(flow.step_size) if not callable(flow.step_size) else None,
        "diverged": hist.get("diverged"),
        "compile_s": compile_s,
        "wall_s": wall,
        "step": np.asarray(hist["step"]).tolist(),
        "wall_time": np.asarray(hist["wall_time"]).tolist(),
        "load": common.loadavg(),
    }
    if density:
        ref = prob["ref"]
        traj = hist["trajectory"]
        f = jax.jit(lambda x: mmd2(x, ref, k))
        m = [float(f(x)) if np.isfinite(x).all() else float("nan") for x in traj]
        xf = np.asarray(state.x)
        rec.update(
            ksd2=np.asarray(hist["ksd2"]).tolist(),
            mmd2=m,
            iid_mmd2=prob["iid_mmd2"],
            **moment_errors(xf, ref),
        )
    else:
        rec["mmd2"] = np.asarray(hist["mmd2"]).tolist()
    if keep_particles:
        target = prob["ref"][:n] if density else y
        rec.update(x0=x0, x=np.asarray(state.x), target=target)
    m = rec["mmd2"]
    rec["mmd2_start"], rec["mmd2_end"] = m[0], m[-1]
    rec["reduction"] = m[0] / m[-1] if m[-1] > 0 else None
    rec["thresholds"] = {}
    for factor in THRESHOLDS:
        i = _first_below(m, m[0], factor)
        rec["thresholds"][str(factor)] = (
            None if i is None else {"step": rec["step"][i], "wall_s": rec["wall_time"][i]}
        )
    return rec


def time_per_step(flow_name: str, ns, repeats: int = 3, seed: int = 0) -> dict:
    """Seconds per step of a jitted ``flows.scan`` against ``n``; the fitted exponent.

    An ``n`` whose step is predicted above :data:`MAX_STEP_S` (quadratic growth from the
    previous ``n``) is skipped, and so are the larger ones.
    """
    problem = "gaussian->8gaussians" if takes(flow_name, density=False) else "banana"
    rows, skipped = [], []
    for n in ns:
        if rows and rows[-1]["per_step_s"] * (n / rows[-1]["n"]) ** 2 > MAX_STEP_S:
            skipped.append(n)
            continue
        prob = make_problem(problem, n, seed)
        flow = make_flow(flow_name, prob, n, 2)
        y = None if prob["y"] is None else jax.numpy.asarray(prob["y"])
        state = flow.init(jax.numpy.asarray(prob["x0"]), jax.random.key(seed), y=y)
        scan = jax.jit(lambda s, yy, flow=flow: flows.scan(flow, s, yy, SCAN_STEPS)[0])
        t = time.perf_counter()
        state = jax.block_until_ready(scan(state, y))  # compiles
        compile_s = time.perf_counter() - t
        times = common.timings(lambda state=state, scan=scan, y=y: scan(state, y), repeats)
        rows.append(
            {"n": n, "per_step_s": statistics.median(times) / SCAN_STEPS, "compile_s": compile_s}
        )
    out = {"flow": flow_name, "problem": problem, "rows": rows, "skipped_n": skipped}
    out["exponent"] = None
    if len(rows) >= 2:
        a = np.polyfit(np.log([r["n"] for r in rows]), np.log([r["per_step_s"] for r in rows]), 1)
        out["exponent"] = float(a[0])
    return out


def _fmt_threshold(t: dict | None) -> str:
    return "-" if t is None else f"{t['step']} / {t['wall_s']:.1f}s"


def markdown_tables(result: dict) -> str:
    """The runs (one row each) and the time-per-step fits, as markdown."""
    head = " | ".join(f"{f}x: step / s" for f in THRESHOLDS)
    lines = [
        "| problem | flow | MMD² start → end | reduction | KSD² end | mean / cov err "
        f"| {head} | s/step | compile s |",
        "|---|---|---|---:|---:|---|" + "---|" * len(THRESHOLDS) + "---:|---:|",
    ]
    for r in result["runs"]:
        per = (r["wall_s"] / max(r["steps_done"], 1)) * 1e3
        red = common.fmt(r["reduction"], ",.0f")
        ksd = common.fmt(r.get("ksd2", [None])[-1], ".2e")
        err = "-"
        if "mean_error" in r:
            err = f"{r['mean_error']:.2f} / {r['cov_error']:.2f}"
        flag = " (diverged)" if r["diverged"] else ""
        ths = " | ".join(_fmt_threshold(r["thresholds"][str(f)]) for f in THRESHOLDS)
        lines.append(
            f"| {r['problem']} | {r['flow']}{flag} | {r['mmd2_start']:.2e} → {r['mmd2_end']:.2e} "
            f"| {red}x | {ksd} | {err} | {ths} | {per:.1f} ms | {r['compile_s']:.1f} |"
        )
    if result["scaling"]:
        ns = result["metadata"]["scaling_n"]
        lines += [
            "",
            "| flow | problem | " + " | ".join(f"n={n} ms/step" for n in ns) + " | exponent |",
            "|---|---|" + "---:|" * (len(ns) + 1),
        ]
        for s in result["scaling"]:
            by_n = {row["n"]: row["per_step_s"] for row in s["rows"]}
            cells = " | ".join(common.fmt(by_n.get(n) and 1e3 * by_n[n], ".2f") for n in ns)
            lines.append(
                f"| {s['flow']} | {s['problem']} | {cells} | {common.fmt(s['exponent'], '.2f')} |"
            )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """Final metric per problem and flow, metric against wall time, time per step against n."""
    from matplotlib.figure import Figure

    runs = result["runs"]
    names = list(dict.fromkeys(r["flow"] for r in runs))
    colors = {f: f"C{i}" for i, f in enumerate(names)}
    problems = list(dict.fromkeys(r["problem"] for r in runs))
    fig = Figure(figsize=(16, 4.4), layout="constrained")
    ax = fig.subplots(1, 3)
    for r in runs:
        i = problems.index(r["problem"])
        ax[0].scatter(i, max(r["mmd2_end"], 1e-12), color=colors[r["flow"]], s=25)
        if "iid_mmd2" in r:
            ax[0].scatter(i, r["iid_mmd2"], marker="_", color="k", s=200)
    ax[0].set_xticks(range(len(problems)), problems, rotation=30, fontsize=8)
    ax[0].set_yscale("log")
    ax[0].set_title("final MMD² (densities: to exact samples; — iid samples)", fontsize=9)
    for r in runs:
        m = np.asarray(r["mmd2"], float) / r["mmd2_start"]
        ls = "-" if r["kind"] == "samples" else "--"
        pick = r["problem"] in ("moons->rings", "banana")
        if pick:
            ax[1].plot(np.maximum(r["wall_time"], 1e-3), m, ls, color=colors[r["flow"]])
    ax[1].set_xscale("log")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("wall s (compilation excluded)")
    ax[1].set_title("MMD² / start: moons->rings (solid), banana (dashed)", fontsize=9)
    for s in result["scaling"]:
        n = [row["n"] for row in s["rows"]]
        t = [row["per_step_s"] for row in s["rows"]]
        label = f"{s['flow']} (n^{common.fmt(s['exponent'], '.2f')})"
        ax[2].loglog(n, t, "o-", color=colors.get(s["flow"], "k"), label=label)
    ax[2].set_xlabel("n (particles = targets)")
    ax[2].set_ylabel("s / step")
    ax[2].set_title("time per step (jitted scan)", fontsize=9)
    ax[2].legend(fontsize=7)
    for a in ax:
        a.grid(True, which="both", alpha=0.3)
    for f in names:  # one legend of the flows
        ax[0].scatter([], [], color=colors[f], label=f)
    ax[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    """The options (``--flows`` defaults to every flow of the registry)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 particles, 20 steps, two problems")
    p.add_argument("--flows", nargs="+", choices=tuple(flows.FLOWS), default=list(flows.FLOWS))
    choices = (*SAMPLE_PROBLEMS, *DENSITY_PROBLEMS)
    p.add_argument("--problems", nargs="+", choices=choices, default=None)
    p.add_argument("--n", type=int, default=None, help="particles (= target samples)")
    p.add_argument("--steps", type=int, default=None, help="step budget per run")
    p.add_argument("--scaling-n", type=int, nargs="*", default=None, help="n of the s/step fit")
    p.add_argument(
        "--scaling-flows",
        nargs="*",
        choices=tuple(flows.FLOWS),
        default=None,
        help=f"flows of the s/step fit (default: --flows; --quick: {', '.join(QUICK_SCALING)})",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Runs the comparison; writes the JSON and the plot, prints the tables."""
    a = parse_args(argv)
    choices = (*SAMPLE_PROBLEMS, *DENSITY_PROBLEMS)
    size = QUICK if a.quick else FULL
    n, steps = a.n or size["n"], a.steps or size["steps"]
    scaling_n = size["scaling_n"] if a.scaling_n is None else a.scaling_n
    problems = a.problems or (QUICK_PROBLEMS if a.quick else choices)
    out = a.out or common.default_out("flows_compare", a.quick)
    meta = common.environment() | {
        "schema": SCHEMA,
        "n": n,
        "steps": steps,
        "scaling_n": list(scaling_n),
        "thresholds": list(THRESHOLDS),
        "ref_samples": REF_SAMPLES,
        "quick": a.quick,
    }
    result = {"metadata": meta, "runs": [], "scaling": []}
    t0 = time.perf_counter()
    for prob in problems:
        density = prob in DENSITY_PROBLEMS
        if prob == "digits-64d" and n > 1797:
            continue
        for name in a.flows:
            if not takes(name, density):
                continue
            r = run_one(name, prob, n, steps)
            result["runs"].append(r)
            common.log(
                f"{prob} {name}: MMD^2 {r['mmd2_start']:.2e} -> {r['mmd2_end']:.2e} in "
                f"{r['steps_done']} steps, {r['wall_s']:.1f}s (+{r['compile_s']:.1f}s compile) "
                f"load {r['load']}"
            )
            common.write_json(out, result)
    scaling_flows = a.scaling_flows
    if scaling_flows is None:
        scaling_flows = [f for f in a.flows if f in QUICK_SCALING] if a.quick else a.flows
    if scaling_n:
        for name in scaling_flows:
            s = time_per_step(name, scaling_n)
            result["scaling"].append(s)
            common.log(f"s/step {name}: {[r['per_step_s'] for r in s['rows']]} a={s['exponent']}")
    meta["total_wall_s"] = time.perf_counter() - t0
    meta["loadavg_end"] = common.loadavg()
    common.write_json(out, result)
    if not a.no_plot:
        plot(result, out.with_suffix(".png"))
    print(markdown_tables(result))
    print(f"\n{meta['date_utc']}, total {meta['total_wall_s']:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
