"""The measurement behind the ``mmdflow flow`` defaults: MMD^2 reduction, stragglers, time.

Runs flows the way ``mmdflow flow`` builds them (median bandwidth of source and target
pooled, the ``--kernel`` mixture, ``reg`` in units of ``1 / bandwidth^2``, random features
redrawn every step, the neural step in units of the bandwidth) on a table of cases, for a
set of named settings (``--configs``; ``default`` is whatever ``mmdflow/cli/_common.py``
holds now, ``old`` what it held before the far-source fix), and reports per run:

* ``reduction``: MMD^2(start) / MMD^2(end), both in float64 under one *fixed* evaluation
  kernel for every setting (a mixture of Gaussians at the median bandwidth x {1/8, 1/4,
  1/2, 1}, the default kernel of the CLI before any change here); ``floor`` is the same
  ratio for an independent target sample of the same size in place of the particles (the
  best a flow can show at that ``n``);
* ``osc``: MMD^2 at the end over the lowest recorded MMD^2 (1 = still decreasing or flat;
  large = it went up again: oscillation or a stall);
* ``far`` / ``max gap``: the distance of each particle to its nearest target sample, in
  units of the largest such distance of an independent target sample (the target's own
  spacing at that ``n``); ``far`` counts particles above 2, ``max gap`` is the largest;
* ``jump``: the largest single-step displacement of any particle, in base bandwidths;
* ``time``: wall time of the run (compile included).

Cases: 2-D toy pairs (``gaussian -> 8gaussians`` (the CLI default), ``-> rings``,
``-> checkerboard``, ``-> letter``, ``moons -> spiral``) and far sources
``N(0, I) -> N(2 * 1, I)`` in d = 3, 5, 10 (``far3d`` .. ``far10d``; the issue-13 case is
``far3d`` with 300 points), drawn with ``np.random.default_rng(seed)``.

Usage:
  python benchmarks/flow_defaults.py --quick                    # smoke run (seconds)
  python benchmarks/flow_defaults.py                            # sobolev table (~10 min, 2 cores)
  python benchmarks/flow_defaults.py --method neural-sobolev    # neural table
  python benchmarks/flow_defaults.py --configs old default --cases far3d far5d \\
      --config "big-reg:reg=0.1"                                # ad-hoc settings

``--config NAME:key=value,...`` adds a setting (keys: the fields of :data:`SOBOLEV` or
:data:`NEURAL` entries). Writes JSON (metadata header + records) to ``--out`` (default
``benchmarks/results/flow_defaults_<method>_<platform>[_quick].json``) and prints a
markdown table (one row per case, one column group per setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import _common as common
import jax
import jax.numpy as jnp
import numpy as np

from mmdflow import data, flows, kernels
from mmdflow.cli import _common as cli

SCHEMA = "mmdflow.bench.flow_defaults/1"
#: the evaluation kernel: mixture of Gaussians at the median bandwidth times these
EVAL_FACTORS = (0.125, 0.25, 0.5, 1.0)
#: a particle is "far" when its nearest-target distance exceeds this many target spacings
FAR_RATIO = 2.0

#: case name -> (source, target); a source "normal" with a target "normal+2" is the far case
CASES = {
    "8gaussians": ("gaussian", "8gaussians", 2),
    "rings": ("gaussian", "rings", 2),
    "checkerboard": ("gaussian", "checkerboard", 2),
    "letter": ("gaussian", "letter", 2),
    "moons-spiral": ("moons", "spiral", 2),
    "far3d": ("normal", "normal+2", 3),
    "far5d": ("normal", "normal+2", 5),
    "far10d": ("normal", "normal+2", 10),
}

#: Sobolev settings. kernel: "mixture" (factors x median) or "gaussian" (median);
#: features: int (redrawn every step unless fixed) or None (exact kernel critic).
SOBOLEV = {
    "old": dict(
        kernel="mixture",
        factors=(0.125, 0.25, 0.5, 1.0),
        features=128,
        fixed=False,
        step=0.5,
        reg=0.01,
        normalize=False,
        max_move=None,
    ),
    "default": None,  # filled from the CLI constants (see sobolev_default)
    "gaussian": dict(kernel="gaussian", features=128),
    "exact": dict(features=None),
    "cap0.25": dict(max_move=0.25),
}

#: neural Sobolev settings: step in units of the bandwidth, critic hyperparameters
NEURAL = {
    "old": dict(
        step=0.025,
        critic_steps=10,
        startup=None,
        rho=0.01,
        lr=1e-3,
        hidden=(64, 64),
        reset=True,
        decay=1.0,
    ),
    "default": None,  # filled from the CLI constants (see neural_default)
}


def sobolev_default() -> dict:
    """The Sobolev setting the CLI uses now (``SobolevField.defaults_for``'s constants)."""
    from mmdflow.fields import _sobolev as S

    return dict(
        kernel="mixture",
        factors=tuple(cli.MIXTURE_FACTORS),
        features=S.DEFAULT_NUM_FEATURES,
        fixed=False,
        step=S.STEP_SIZE,
        reg=S.REG,
        normalize=False,
        max_move=S.MAX_MOVE,
    )


def neural_default() -> dict:
    """The neural setting the CLI uses now (constants, and the stepper's own defaults)."""
    from mmdflow.fields import _neural as N

    defaults = {f.name: f.default for f in dataclasses.fields(N.NeuralSobolevField)}
    return dict(
        step=N.STEP_FACTOR,
        critic_steps=defaults["critic_steps"],
        startup=defaults["startup_critic_steps"],
        rho=defaults["rho"],
        lr=1e-3,
        hidden=N.DEFAULT_HIDDEN,
        reset=defaults["reset_optimizer"],
        decay=1.0,
    )


def settings_for(method: str, name: str, extra: dict[str, dict]) -> dict:
    """The full setting ``name`` of ``method``: defaults overlaid with its own keys."""
    base = sobolev_default() if method == "sobolev" else neural_default()
    table = SOBOLEV if method == "sobolev" else NEURAL
    if name in extra:
        over = extra[name]
    elif name in table:
        over = table[name] or {}
    else:
        raise SystemExit(f"unknown setting {name!r} (known: {sorted(table) + sorted(extra)})")
    return {**base, **over}


def _parse_value(text: str):
    if text in ("None", "none"):
        return None
    if text in ("True", "False"):
        return text == "True"
    if "/" in text or text.startswith("("):
        return tuple(float(t) for t in text.strip("()").replace("/", ",").split(",") if t)
    try:
        return int(text)
    except ValueError:
        return float(text) if text[:1].isdigit() or text[:1] in "-." else text


def parse_config(spec: str) -> tuple[str, dict]:
    """``"name:key=value,key=value"`` -> ``(name, {key: value})``; tuples as ``a/b/c``."""
    name, _, body = spec.partition(":")
    over = {}
    for item in filter(None, body.split(",")):
        key, _, val = item.partition("=")
        over[key.strip()] = _parse_value(val.strip())
    return name, over


# ---------------------------------------------------------------- inputs and metrics
def case_points(case: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Particles ``x0``, target ``y`` and an independent target sample ``y2`` (float32)."""
    src, tgt, d = CASES[case]
    if src == "normal":
        rng = np.random.default_rng(seed)
        x0 = rng.normal(size=(n, d)).astype(np.float32)
        y = (rng.normal(size=(n, d)) + 2.0).astype(np.float32)
        y2 = (rng.normal(size=(n, d)) + 2.0).astype(np.float32)
        return x0, y, y2
    x0 = data.sample(src, n, seed=seed)
    y = data.sample(tgt, n, seed=seed + 1)  # the CLI's target seed
    y2 = data.sample(tgt, n, seed=seed + 1000)
    return x0.astype(np.float32), y.astype(np.float32), y2.astype(np.float32)


def mmd2_f64(x: np.ndarray, y: np.ndarray, bandwidths) -> float:
    """Biased MMD^2 in float64 under a mixture of Gaussians."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c = 1.0 / (2.0 * np.asarray(bandwidths, np.float64) ** 2)

    def mean_k(a, b):
        d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
        return sum(float(np.exp(-ci * d2).mean()) for ci in c)

    return mean_k(x, x) + mean_k(y, y) - 2.0 * mean_k(x, y)


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each row of ``a`` to its nearest row of ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def median_bandwidth(x0: np.ndarray, y: np.ndarray) -> float:
    return float(kernels.median_bandwidth(x0, y))


# ---------------------------------------------------------------- steppers
def make_sobolev(cfg: dict, bw: float):
    """The CLI's ``--method sobolev`` stepper for setting ``cfg`` and base bandwidth ``bw``."""
    if cfg["kernel"] == "gaussian":
        k = kernels.Gaussian(np.float32(bw))
    else:
        k = kernels.MixtureRBF(np.asarray([bw * f for f in cfg["factors"]], np.float32))
    nf = cfg["features"]
    cap = cfg.get("max_move")
    return flows.make(
        "sobolev",
        k,
        step_size=cfg["step"],
        reg=cfg["reg"] / bw**2,
        num_features=nf,
        resample_features=nf is not None and not cfg["fixed"],
        normalize=cfg["normalize"],
        max_move=None if cap is None else cap * bw,
    )


def make_neural(cfg: dict, bw: float, d: int, seed: int):
    """The CLI's ``--method neural-sobolev`` stepper for setting ``cfg``."""
    import optax

    from mmdflow import fields

    critic = fields.mlp_critic(d, hidden=cfg["hidden"], key=jax.random.key(seed + 2))
    step = cfg["step"] * bw
    if cfg["decay"] != 1.0:  # geometric decay to `decay` x the step at the last step
        rate, total = float(cfg["decay"]), float(cfg["_steps"])
        step = lambda t, s0=step: s0 * rate ** (t / total)  # noqa: E731
    kw = {}
    if cfg["startup"] is not None:
        kw["startup_critic_steps"] = cfg["startup"]
    return flows.make(
        "neural-sobolev",
        critic=critic,
        optimizer=optax.adam(cfg["lr"]),
        critic_steps=cfg["critic_steps"],
        step_size=step,
        rho=cfg["rho"],
        kernel=kernels.Gaussian(np.float32(bw)),
        reset_optimizer=cfg["reset"],
        **kw,
    )


def run_one(method: str, case: str, name: str, cfg: dict, args, seed: int) -> dict:
    """One flow; returns its record."""
    x0, y, y2 = case_points(case, args.n, seed)
    n, d = x0.shape
    bw = median_bandwidth(x0, y)
    eval_bws = [bw * f for f in EVAL_FACTORS]
    cfg = {**cfg, "_steps": args.steps}
    if method == "sobolev":
        stepper = make_sobolev(cfg, bw)
    else:
        stepper = make_neural(cfg, bw, d, seed)
    yj = jnp.asarray(y)

    def body(s, _):
        new, _aux = stepper.step(s, yj)
        jump = jnp.max(jnp.linalg.norm(new.x - s.x, axis=1))
        return new, jump

    chunk = jax.jit(lambda s: jax.lax.scan(body, s, None, length=args.record_every))
    t0 = time.perf_counter()
    state = stepper.init(jnp.asarray(x0), jax.random.key(seed))
    mmd = [mmd2_f64(x0, y, eval_bws)]
    jumps = []
    done = 0
    while done < args.steps:
        state, jump = chunk(state)
        done += args.record_every
        x = np.asarray(state.x)
        jumps.append(float(jnp.max(jump)))
        mmd.append(mmd2_f64(x, y, eval_bws) if np.isfinite(x).all() else float("nan"))
    wall = time.perf_counter() - t0
    x = np.asarray(state.x)
    spacing = float(nearest(y2, y).max())
    gap = nearest(x, y) / spacing if np.isfinite(x).all() else np.full(n, np.inf)
    floor = mmd2_f64(y2, y, eval_bws)
    finite = [m for m in mmd if np.isfinite(m)]
    return {
        "method": method,
        "case": case,
        "setting": name,
        "config": {k: v for k, v in cfg.items() if not k.startswith("_")},
        "seed": seed,
        "n": n,
        "d": d,
        "steps": done,
        "bandwidth": bw,
        "mmd2_start": mmd[0],
        "mmd2_end": mmd[-1],
        "mmd2_floor": floor,
        "reduction": mmd[0] / mmd[-1] if mmd[-1] > 0 else float("inf"),
        "floor_reduction": mmd[0] / floor,
        "oscillation": mmd[-1] / min(finite) if np.isfinite(mmd[-1]) else float("inf"),
        "far": int((gap > FAR_RATIO).sum()),
        "max_gap": float(gap.max()),
        "max_jump_bw": max(jumps) / bw,
        "target_spacing": spacing,
        "mmd2_history": mmd,
        "record_every": args.record_every,
        "time_s": wall,
    }


# ---------------------------------------------------------------- output
def summarize(records: list[dict]) -> list[dict]:
    """Per (case, setting): geometric-mean reduction over seeds, worst far / gap / osc."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["case"], r["setting"]), []).append(r)
    rows = []
    for (case, name), rs in groups.items():
        red = np.exp(np.mean([np.log(max(min(r["reduction"], 1e30), 1e-30)) for r in rs]))
        rows.append(
            {
                "case": case,
                "setting": name,
                "seeds": len(rs),
                "reduction": float(red),
                "min_reduction": min(r["reduction"] for r in rs),
                "floor_reduction": float(np.mean([r["floor_reduction"] for r in rs])),
                "oscillation": max(r["oscillation"] for r in rs),
                "far": max(r["far"] for r in rs),
                "max_gap": max(r["max_gap"] for r in rs),
                "max_jump_bw": max(r["max_jump_bw"] for r in rs),
                "time_s": float(np.mean([r["time_s"] for r in rs])),
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """One line per (case, setting)."""
    head = (
        "| case | setting | MMD² reduction (min over seeds) | floor | osc | far | max gap "
        "| max jump (bw) | time (s) |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['setting']} | {r['reduction']:,.0f} ({r['min_reduction']:,.0f}) "
            f"| {r['floor_reduction']:,.0f} | {r['oscillation']:.2g} | {r['far']} "
            f"| {r['max_gap']:.2g} | {r['max_jump_bw']:.2g} | {r['time_s']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=("sobolev", "neural-sobolev"), default="sobolev")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    p.add_argument("--configs", nargs="+", default=None, help="settings to run (by name)")
    p.add_argument("--config", action="append", default=[], help="NAME:key=value,... (adds one)")
    p.add_argument("--n", type=int, default=300, help="particles = target samples (default 300)")
    p.add_argument("--steps", type=int, default=500, help="flow steps (default 500)")
    p.add_argument("--record-every", type=int, default=25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.record_every = min(args.n, 48), min(args.steps, 6), 3
        args.cases = args.cases or ["8gaussians", "far3d"]
    args.record_every = min(args.record_every, args.steps)
    if args.steps % args.record_every:
        p.error("--steps must be a multiple of --record-every")
    return args


def main(argv=None) -> dict:
    """Runs the table; writes the JSON, prints the markdown table, returns the result dict."""
    args = parse_args(argv)
    method = args.method
    extra = dict(parse_config(s) for s in args.config)
    table = SOBOLEV if method == "sobolev" else NEURAL
    names = args.configs or [*table, *extra]
    cases = args.cases or list(CASES)
    tag = "sobolev" if method == "sobolev" else "neural"
    out = Path(args.out or common.default_out(f"flow_defaults_{tag}", args.quick))
    meta = {
        "schema": SCHEMA,
        **common.environment(),
        "method": method,
        "n": args.n,
        "steps": args.steps,
        "seeds": args.seeds,
        "eval_kernel": f"MixtureRBF(median x {list(EVAL_FACTORS)})",
        "far_ratio": FAR_RATIO,
        "settings": {nm: settings_for(method, nm, extra) for nm in names},
    }
    result = {"metadata": meta, "records": []}
    t_start = time.perf_counter()
    for case in cases:
        for nm in names:
            for seed in args.seeds:
                rec = run_one(method, case, nm, settings_for(method, nm, extra), args, seed)
                result["records"].append(rec)
                common.log(
                    f"{case:13s} {nm:14s} seed {seed}: reduction {rec['reduction']:10.1f} "
                    f"(floor {rec['floor_reduction']:.0f}) osc {rec['oscillation']:.2g} "
                    f"far {rec['far']} gap {rec['max_gap']:.2g} "
                    f"jump {rec['max_jump_bw']:.2g} bw, {rec['time_s']:.1f} s"
                )
        meta["total_wall_s"] = time.perf_counter() - t_start
        common.write_json(out, result)
    meta["loadavg_end"] = common.loadavg()
    result["summary"] = summarize(result["records"])
    common.write_json(out, result)
    print(
        f"\nmmdflow flow defaults ({method}): {meta['platform']}, jax {meta['jax']}, "
        f"{meta['date_utc']}, load {meta['loadavg_start']} -> {meta['loadavg_end']}, "
        f"total {meta['total_wall_s']:.0f} s; JSON: {out}\n"
    )
    print(markdown_table(result["summary"]))
    return result


if __name__ == "__main__":
    main()
