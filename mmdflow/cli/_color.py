"""``mmdflow color-transfer``: recolor an image by Sobolev descent of its pixel colors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from mmdflow.cli._common import (
    CLIError,
    ProgressBar,
    _one_line,
    _write_json,
)
from mmdflow.cli._inputs import (
    _features_note,
    _fmt_change,
    _kernel_mmd2_f64,
    _make_kernel,
    _median_bandwidth,
    _reduction,
    _strip_spec,
    _timings,
    resolve_num_features,
)
from mmdflow.cli._rundir import RunDir


def _load_image(option: str, spec: str) -> np.ndarray:
    import warnings

    from mmdflow import data

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = data.image(spec)
    except (ValueError, OSError) as e:
        raise CLIError(f"{option} {spec!r}: {_strip_spec(str(e), 'image: ', spec)}") from None
    for w in caught:  # e.g. the fallback image when scikit-image is missing
        print(f"mmdflow: warning: {_one_line(str(w.message))}", file=sys.stderr)
    if img.shape[0] * img.shape[1] < 2:
        raise CLIError(f"{option} {spec!r}: image has fewer than 2 pixels (shape {img.shape})")
    return img


def _downscale(img: np.ndarray, max_size: int) -> np.ndarray:
    """Area-averaging downscale so that the longest side is at most ``max_size`` (0: keep)."""
    h, w = img.shape[:2]
    if max_size <= 0 or max(h, w) <= max_size:
        return img
    from PIL import Image  # a matplotlib dependency

    s = max_size / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))


def _color_transfer_chunk_fn(flow, y):
    """Jitted ``(state, pixels, n) -> ((state, pixels), aux)``: ``n`` steps moving both.

    The particles take the flow's step; the pixels (``[C, B, 3]`` blocks) move along the
    same step's velocity field, evaluated block by block.
    """
    import jax

    from mmdflow.fields import schedule_value

    def one(carry, _):
        state, pix = carry
        eps = schedule_value(flow.step_size, state.count)
        v, vel, state, aux = flow.velocity(state, y)
        pix = pix + eps * jax.lax.map(vel.fn, pix)
        state, aux = flow.move(state, v, aux)
        return (state, pix), {k: aux[k] for k in ("kinetic", "critic")}

    def chunk(state, pix, n):
        return jax.lax.scan(one, (state, pix), None, length=n)

    return jax.jit(chunk, static_argnums=2)


def _cmd_color_transfer(args) -> int:
    t_cmd = time.perf_counter()
    rundir = RunDir(args.out, "color-transfer", overwrite=args.overwrite)
    out = Path(args.out)  # as given, for messages
    src_full = _load_image("--source", args.source)
    tgt_full = _load_image("--target", args.target)

    import jax
    import jax.numpy as jnp
    from matplotlib.image import imsave

    from mmdflow import __version__, data, flows, plots
    from mmdflow.mmd import mmd2

    src = _downscale(src_full, args.max_size)
    tgt = _downscale(tgt_full, args.max_size)
    pixels, shape = data.image_to_points(src)
    xs, _ = data.image_to_points(src, max_points=args.n_colors, seed=args.seed)
    ys, _ = data.image_to_points(tgt, max_points=args.n_colors, seed=args.seed + 1)
    if args.bandwidth is not None:
        bw, bw_rule = args.bandwidth, "user"
    else:
        bw = _median_bandwidth(xs, ys, "the source/target colors")
        bw_rule = "median heuristic (source and target color subsamples pooled)"
    kernel, kernel_info = _make_kernel(args.kernel, bw)
    nf, nf_rule = resolve_num_features(args.num_features, xs.shape[0], 3)
    resample = nf is not None and not args.fixed_features
    try:
        stepper = flows.make(
            "sobolev",
            kernel,
            step_size=args.step_size,
            reg=args.reg / bw**2,
            num_features=nf,
            resample_features=resample,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    record_every = args.record_every or max(1, round(args.steps / 50))
    block = min(4096, pixels.shape[0])
    npix = pixels.shape[0]
    nblocks = -(-npix // block)
    padded = np.zeros((nblocks * block, 3), np.float32)
    padded[:npix] = pixels
    settings = {
        "source": args.source,
        "target": args.target,
        "source_shape": list(src_full.shape),
        "target_shape": list(tgt_full.shape),
        "working_source_shape": list(src.shape),
        "working_target_shape": list(tgt.shape),
        "max_size": args.max_size,
        "n_colors_source": int(xs.shape[0]),
        "n_colors_target": int(ys.shape[0]),
        "n_pixels_moved": npix,
        "steps": args.steps,
        "step_size": args.step_size,
        "reg": args.reg,
        "reg_absolute": args.reg / bw**2,
        "reg_rule": "reg is in units of 1/bandwidth^2; the solver gets reg_absolute",
        "num_features": nf,
        "critic": "exact" if nf is None else "rff",
        "num_features_rule": nf_rule,
        "features": _features_note(nf, resample),
        "bandwidth": bw,
        "bandwidth_rule": bw_rule,
        "kernel": kernel_info,
        "seed": args.seed,
        "record_every": record_every,
        "clip": "final colors clipped to [0, 1]",
        "mmdflow_version": __version__,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
    }
    t_setup = time.perf_counter() - t_cmd

    bar = ProgressBar(args.steps, label="color-transfer", enabled=None if not args.quiet else False)
    with rundir.staged() as tmp:
        bar.start()
        y = jnp.asarray(ys)
        state = stepper.init(jnp.asarray(xs), jax.random.key(args.seed))
        pix = jnp.asarray(padded.reshape(nblocks, block, 3))
        chunk = _color_transfer_chunk_fn(stepper, y)
        measure = jax.jit(lambda x: mmd2(x, y, kernel))
        nan = float("nan")
        hist = {
            "step": [0],
            "mmd2": [float(measure(state.x))],
            "kinetic": [nan],
            "critic": [nan],
            "wall_time": [0.0],
        }
        t0 = time.perf_counter()
        done = 0
        try:
            while done < args.steps:
                k = min(record_every, args.steps - done)
                (state, pix), aux = chunk(state, pix, k)
                done += k
                rec = {
                    "step": done,
                    "mmd2": float(measure(state.x)),
                    "kinetic": float(aux["kinetic"][-1]),
                    "critic": float(aux["critic"][-1]),
                    "wall_time": time.perf_counter() - t0,
                }
                for key, val in rec.items():
                    hist[key].append(val)
                bar.update(done, rec)  # also checks for a pending interrupt
        finally:
            bar.close()
        moved = np.asarray(pix).reshape(-1, 3)[:npix]
        if not np.isfinite(moved).all():
            raise CLIError(
                "the flow diverged (non-finite colors); try a smaller --step-size", code=1
            )
        t_io = time.perf_counter()
        recolored = data.points_to_image(np.clip(moved, 0.0, 1.0), shape)
        imsave(tmp / "recolored.png", recolored)
        plots.plot_color_transfer(
            src, tgt, recolored, tmp / "comparison.png", titles=("source", "target", "recolored")
        )
        plots.plot_history(hist, tmp / "mmd.png", title="color transfer (fitted pixels)")
        # Held-out check: a fresh pixel subsample of the result vs the target colors.
        rng = np.random.default_rng(args.seed + 2)
        idx = rng.choice(npix, size=min(npix, args.n_colors), replace=False)
        bws = kernel_info["bandwidths"]
        fit_start = _kernel_mmd2_f64(xs, ys, bws)
        fit_end = _kernel_mmd2_f64(np.asarray(state.x), ys, bws)
        held_start = _kernel_mmd2_f64(pixels[idx], ys, bws)
        held_end = _kernel_mmd2_f64(recolored.reshape(-1, 3)[idx] / 255.0, ys, bws)
        t_io = time.perf_counter() - t_io
        metrics = {
            "command": "color-transfer",
            "settings": settings,
            "summary": {
                "mmd2_fit_start": fit_start,
                "mmd2_fit_end": fit_end,
                "mmd2_fit_reduction": _reduction(fit_start, fit_end),
                "mmd2_pixels_start": held_start,
                "mmd2_pixels_end": held_end,
                "mmd2_pixels_reduction": _reduction(held_start, held_end),
                "mmd2_note": "float64, flow kernel; 'fit' = the subsample driving the flow, "
                "'pixels' = a fresh subsample of all recolored pixels (after clipping and "
                "8-bit rounding) against the target colors",
            },
            "history": hist,
            "timings": {
                **_timings(hist, args.steps, record_every),
                "setup_s": t_setup,
                "outputs_s": t_io,
                "total_s": time.perf_counter() - t_cmd,
            },
            "files": ["recolored.png", "comparison.png", "mmd.png", "metrics.json"],
        }
        _write_json(tmp / "metrics.json", metrics)
    print(
        f"mmdflow color-transfer: {args.source} recolored with {args.target}'s colors "
        f"({src.shape[1]}x{src.shape[0]} px): pixel MMD^2 {held_start:.3e} -> {held_end:.3e} "
        f"({_fmt_change(held_start, held_end)}), "
        f"{metrics['timings']['total_s']:.1f}s; pictures: {out / 'recolored.png'}, "
        f"{out / 'comparison.png'}",
        flush=True,
    )
    return 0
