"""Plotting helpers for particle flows and color transfer (used by :mod:`mmdflow.cli`).

Figures are built with :class:`matplotlib.figure.Figure` directly (never
``pyplot``), so nothing here touches global matplotlib state or needs a display:
``Figure.savefig`` renders with the Agg backend. matplotlib is imported lazily,
inside the functions.

Layouts are fixed, in inches (:func:`_axes_row`), sized from the number of panels, the
data's aspect ratio and the number of title lines: neither a layout engine nor
``bbox_inches="tight"``, each of which draws the figure once more before saving it (a
constrained layout solves its layout on both draws), so that every picture is drawn once.

Example:
    >>> import numpy as np
    >>> from mmdflow import plots
    >>> traj = np.random.default_rng(0).normal(size=(3, 100, 2))
    >>> plots.plot_flow(traj, [0, 10, 20], traj[0], "flow.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "pca_projection",
    "select_snapshots",
    "plot_flow",
    "plot_samples",
    "plot_history",
    "plot_critic",
    "plot_color_transfer",
]

_PARTICLE_COLOR = "#d62728"
_TARGET_COLOR = "#b0b0b0"


#: inches per character of a 10-point title (DejaVu Sans averages about 0.55 em)
_CHAR_IN = 0.078


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _axes_row(
    widths: Sequence[float],
    height: float,
    *,
    left: float,
    right: float,
    bottom: float,
    top: float,
    gap: float,
    title: str | None = None,
    title_size: float = 10,
):
    """A figure with a row of axes of the given sizes and margins (all in inches).

    The figure is widened (with equal extra margins) when ``title`` would not fit, and
    ``title`` is drawn as a suptitle ``0.06`` inches below the top edge; ``top`` must leave
    room for it.

    Returns:
        ``(fig, axes)``.
    """
    width = left + sum(widths) + gap * (len(widths) - 1) + right
    need = (_CHAR_IN * len(title) * title_size / 10 + 0.3) if title else 0.0
    if need > width:
        left, right = left + (need - width) / 2, right + (need - width) / 2
        width = need
    total_h = bottom + height + top
    fig = _figure(width, total_h)
    axs, x = [], left
    for w in widths:
        axs.append(fig.add_axes((x / width, bottom / total_h, w / width, height / total_h)))
        x += w + gap
    if title:
        fig.suptitle(title, fontsize=title_size, y=1 - 0.06 / total_h, va="top")
    return fig, axs


def _title(ax, text: str, fontsize: float) -> None:
    """An axes title at a fixed height, unless the y axis shows an offset or a scale factor
    (``1e-3`` above its top end), which the title must clear: the automatic placement
    measures every tick label of the axes at each draw."""
    fmt = ax.yaxis.get_major_formatter()
    fmt.set_locs(ax.yaxis.get_majorticklocs())  # as the draw will, for the final limits
    ax.set_title(text, fontsize=fontsize, y=None if fmt.get_offset() else 1.0)


def _xlabel(ax, text: str, fontsize: float | None = None, ticksize: float | None = None) -> None:
    """An x label at a fixed offset below the axes, from the tick label size ``ticksize``
    (default: the rc value): the automatic placement measures all tick labels of the axes
    at every draw."""
    import matplotlib as mpl
    from matplotlib.font_manager import FontProperties
    from matplotlib.transforms import offset_copy

    rc = mpl.rcParams
    if ticksize is None:
        ticksize = FontProperties(size=rc["xtick.labelsize"]).get_size_in_points()
    # tick length + pad + a tick label line (1.2 em) + label pad, in points
    below = rc["xtick.major.size"] + rc["xtick.major.pad"] + 1.2 * ticksize + rc["axes.labelpad"]
    ax.set_xlabel(text, fontsize=fontsize)
    offset = offset_copy(ax.transAxes, ax.figure, y=-below, units="points")
    ax.xaxis.set_label_coords(0.5, 0.0, offset)


def _panel_size(lim, longest: float) -> tuple[float, float]:
    """``(width, height)`` of an equal-aspect panel whose longer side is ``longest`` inches
    (the shorter at least 40% of it, beyond which the panel keeps some blank)."""
    ratio = (lim[1][1] - lim[1][0]) / max(lim[0][1] - lim[0][0], 1e-300)
    if ratio <= 1:
        return longest, longest * max(ratio, 0.4)
    return longest * max(1 / ratio, 0.4), longest


def pca_projection(reference: np.ndarray, dim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes of a point cloud, for projecting ``d > 2`` data to the plane.

    Args:
        reference: ``[n, d]`` points that define the axes (e.g. the target samples).
        dim: Number of axes to keep (at most ``d``).

    Returns:
        ``(mean, axes)`` with ``mean`` of shape ``[d]`` and ``axes`` of shape
        ``[d, dim]``; project points ``p`` with ``(p - mean) @ axes``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    mean = ref.mean(axis=0)
    dim = min(dim, ref.shape[1])
    # Right singular vectors of the centered data are the principal axes.
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    return mean, vt[:dim].T


def select_snapshots(
    mmd2: Sequence[float] | None, num_records: int, num_panels: int = 5
) -> list[int]:
    """Chooses which recorded snapshots to draw.

    Flows move most in their first steps, so evenly spaced steps would show
    mostly converged pictures. When an MMD^2 history is given, the panels are
    placed where ``log MMD^2`` has covered 0, 1/(k-1), ..., 1 of its total
    decrease (the first record reaching each level), always including the first
    and the last record; otherwise they are evenly spaced.

    Args:
        mmd2: MMD^2 per record (same length as the records), or ``None``.
        num_records: Number of recorded snapshots ``R``.
        num_panels: Desired number of panels ``k``.

    Returns:
        Sorted, distinct record indices (at most ``num_panels``).
    """
    if num_records <= 0:
        return []
    k = max(1, min(num_panels, num_records))
    even = np.unique(np.round(np.linspace(0, num_records - 1, k)).astype(int)).tolist()
    if mmd2 is None or len(mmd2) != num_records or k < 3:
        return even
    m = np.asarray(mmd2, dtype=np.float64)
    pos = np.isfinite(m) & (m > 0)
    if not pos[0] or pos.sum() < 2:
        return even
    logm = np.where(pos, np.log(np.where(pos, m, 1.0)), np.nan)
    lo = np.nanmin(logm)
    if not logm[0] - lo > 1e-12:
        return even
    # Running minimum, so a transient bump never selects an earlier snapshot.
    run = np.fmin.accumulate(np.where(np.isnan(logm), np.inf, logm))
    idx = {0, num_records - 1}
    for frac in np.linspace(0.0, 1.0, k)[1:-1]:
        level = logm[0] - frac * (logm[0] - lo)
        idx.add(int(np.argmax(run <= level)))
    out = sorted(idx)
    if len(out) < k:  # fill collisions with evenly spaced records
        for i in even:
            if len(out) >= k:
                break
            if i not in out:
                out.append(i)
        out.sort()
    return out


def _scatter_panel(ax, pts: np.ndarray, tgt, lim, title: str, tgt_label: str = "target"):
    if tgt is not None:
        ax.scatter(tgt[:, 0], tgt[:, 1], s=3, c=_TARGET_COLOR, linewidths=0, label=tgt_label)
    ax.scatter(pts[:, 0], pts[:, 1], s=3, c=_PARTICLE_COLOR, linewidths=0, label="particles")
    ax.set_xlim(lim[0])
    ax.set_ylim(lim[1])
    ax.set_aspect("equal", adjustable="box")
    _title(ax, title, 9)
    ax.tick_params(labelsize=7)


def _hist_panel(ax, pts: np.ndarray, tgt, lim, title: str, tgt_label: str = "target"):
    bins = np.linspace(lim[0][0], lim[0][1], 60)
    if tgt is not None:
        ax.hist(
            tgt[:, 0],
            bins,
            density=True,
            histtype="stepfilled",
            color=_TARGET_COLOR,
            label=tgt_label,
        )
    ax.hist(
        pts[:, 0],
        bins=bins,
        density=True,
        histtype="step",
        color=_PARTICLE_COLOR,
        lw=1.5,
        label="particles",
    )
    _title(ax, title, 9)
    ax.tick_params(labelsize=7)


def _limits(clouds: Sequence[np.ndarray], dims: int) -> list[tuple[float, float]]:
    allp = np.concatenate([c[:, :dims] for c in clouds], axis=0)
    # Robust limits: ignore the 0.5% most extreme points on each side.
    lo = np.quantile(allp, 0.005, axis=0)
    hi = np.quantile(allp, 0.995, axis=0)
    pad = 0.08 * np.maximum(hi - lo, 1e-6)
    return [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad, strict=True)]


def _contours(ax, density: Callable[[np.ndarray], np.ndarray], lim) -> None:
    """Contours of a 2-D log-density at 0.5, 2, 4.5, 8 and 12.5 below its maximum on the grid
    (a Gaussian's 1 to 5 standard deviations)."""
    gx = np.linspace(lim[0][0], lim[0][1], 120)
    gy = np.linspace(lim[1][0], lim[1][1], 120)
    xx, yy = np.meshgrid(gx, gy)
    lp = np.asarray(density(np.stack([xx.ravel(), yy.ravel()], axis=1)), np.float64)
    lp = lp.reshape(xx.shape)
    if not np.isfinite(lp).any():
        return
    top = np.nanmax(np.where(np.isfinite(lp), lp, np.nan))
    levels = top - np.array([12.5, 8.0, 4.5, 2.0, 0.5])
    ax.contour(xx, yy, lp, levels=levels, colors="0.45", linewidths=0.7)


def plot_flow(
    trajectory: np.ndarray,
    steps: Sequence[int],
    target: np.ndarray | None,
    path: str | os.PathLike,
    *,
    mmd2: Sequence[float] | None = None,
    num_panels: int = 5,
    title: str | None = None,
    metric_label: str = "MMD²",
    target_label: str = "target",
    density: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[int]:
    """Draws snapshots of the particles over the target samples and saves a PNG.

    Data with ``d > 2`` are projected on the two principal axes of the target (of the
    last snapshot when there is no target; the same projection in every panel);
    ``d == 1`` is drawn as histograms.

    Args:
        trajectory: ``[R, n, d]`` recorded particles.
        steps: ``[R]`` step of each record.
        target: ``[m, d]`` target samples (e.g. exact samples of a density), or ``None``.
        path: Output file (PNG).
        mmd2: Optional ``[R]`` MMD^2 (or KSD^2) history, used to place the panels (see
            :func:`select_snapshots`) and shown in the panel titles.
        num_panels: Number of snapshots (4 to 6 reads well).
        title: Optional figure title.
        metric_label: The name of ``mmd2`` in the panel titles (``"KSD²"``).
        target_label: The legend entry of ``target``.
        density: Optional 2-D log-density, ``[k, 2]`` points to ``[k]`` values (NumPy):
            its contours are drawn in every panel (``d == 2`` only).

    Returns:
        The record indices drawn.
    """
    traj = np.asarray(trajectory, dtype=np.float64)
    tgt = None if target is None else np.asarray(target, dtype=np.float64)
    if traj.ndim != 3 or (tgt is not None and (tgt.ndim != 2 or traj.shape[2] != tgt.shape[1])):
        raise ValueError(
            f"plot_flow: expected trajectory [R, n, d] and target [m, d]; got "
            f"{traj.shape} and {None if tgt is None else tgt.shape}."
        )
    d = traj.shape[2]
    if density is not None and d != 2:
        raise ValueError(f"plot_flow: `density` contours need d == 2; got d = {d}.")
    idx = select_snapshots(mmd2, traj.shape[0], num_panels)
    if d > 2:
        mean, axes = pca_projection(traj[-1] if tgt is None else tgt)
        proj = lambda p: (p - mean) @ axes
        xlabel, ylabel = f"PC 1 (of {'final particles' if tgt is None else target_label})", "PC 2"
    else:
        proj = lambda p: p
        xlabel, ylabel = ("x", "density") if d == 1 else ("x1", "x2")
    tgt2 = None if tgt is None else proj(tgt)
    shown = [proj(traj[i]) for i in idx]
    lim = _limits(([] if tgt2 is None else [tgt2]) + shown, min(d, 2))
    lines = 1 + (mmd2 is not None and any(np.isfinite(mmd2[i]) for i in idx))
    pw, ph = (2.7, 2.1) if d == 1 else _panel_size(lim, 2.7)
    fig, axs = _axes_row(
        [pw] * len(idx),
        ph,
        left=0.62,
        right=0.12,
        bottom=0.45,
        top=0.13 + 0.16 * lines + (0.26 if title else 0.0),
        gap=0.45,
        title=title,
    )
    for ax, i, pts in zip(axs, idx, shown, strict=True):
        label = f"step {int(steps[i])}"
        if mmd2 is not None and np.isfinite(mmd2[i]):
            label += f"\n{metric_label} {float(mmd2[i]):.2e}"
        if d == 1:
            _hist_panel(ax, pts, tgt2, lim, label, target_label)
        else:
            if density is not None:
                _contours(ax, density, lim)
            _scatter_panel(ax, pts, tgt2, lim, label, target_label)
        _xlabel(ax, xlabel, 8, ticksize=7)
    axs[0].set_ylabel(ylabel, fontsize=8)
    axs[-1].legend(loc="upper right", fontsize=7, markerscale=3, framealpha=0.7)
    fig.savefig(path, dpi=110)
    return idx


def plot_samples(
    samples: np.ndarray,
    target: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    images: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws generated samples over target samples and saves a PNG.

    ``d == 1`` is drawn as histograms, ``d == 2`` as a scatter plot, and ``d > 2`` as
    a scatter plot on the two principal axes of the target (:func:`pca_projection`).
    With ``images``, the first 64 samples are drawn instead as 8x8 grey images
    (``d == 64``, values in ``[0, 1]``, row-major like scikit-learn's digits).

    Args:
        samples: ``[n, d]`` generated samples.
        target: ``[m, d]`` target samples.
        path: Output file (PNG).
        title: Optional figure title.
        images: Draw 8x8 images (needs ``d == 64``).

    Returns:
        ``(samples2, target2)``: the coordinates drawn, ``[n, min(d, 2)]`` and
        ``[m, min(d, 2)]`` (the inputs themselves for ``images``).
    """
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if s.ndim != 2 or t.ndim != 2 or s.shape[1] != t.shape[1] or not len(s) or not len(t):
        raise ValueError(
            f"plot_samples: expected non-empty samples [n, d] and target [m, d]; got {s.shape} "
            f"and {t.shape}."
        )
    d = t.shape[1]
    if images:
        if d != 64:
            raise ValueError(f"plot_samples: `images` needs d == 64 (8x8); got d = {d}.")
        # one image of the 8x8 tiles, 1-pixel white borders (64 axes drew 10x slower)
        tiles = np.zeros((64, 10, 10))
        tiles[: min(len(s), 64), 1:9, 1:9] = s[:64].reshape(-1, 8, 8)
        mosaic = tiles.reshape(8, 8, 10, 10).transpose(0, 2, 1, 3).reshape(80, 80)
        fig, (ax,) = _axes_row(
            [5.4], 5.4, left=0.1, right=0.1, bottom=0.1, top=0.55 if title else 0.1, gap=0.0
        )
        ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        if title:
            fig.suptitle(f"{title}\n(generated 8x8 images)", fontsize=10, y=0.99, va="top")
        fig.savefig(path, dpi=100)
        return s, t
    if d > 2:
        mean, axes = pca_projection(t)
        s, t = (s - mean) @ axes, (t - mean) @ axes
        xlabel, ylabel = "PC 1 (of the target)", "PC 2 (of the target)"
    else:
        xlabel, ylabel = ("x", "density") if d == 1 else ("x1", "x2")
    lim = _limits([s, t], min(d, 2))
    pw, ph = (4.4, 3.4) if d == 1 else _panel_size(lim, 4.4)
    margins = {"left": 0.8, "right": 0.15, "bottom": 0.6, "gap": 0.0}
    fig, (ax,) = _axes_row([pw], ph, top=0.5 if title else 0.15, title=title, **margins)
    if d == 1:
        bins = np.linspace(lim[0][0], lim[0][1], 60)
        ax.hist(
            t[:, 0], bins, density=True, histtype="stepfilled", color=_TARGET_COLOR, label="target"
        )
        kw = {"histtype": "step", "color": _PARTICLE_COLOR, "lw": 1.5, "label": "generated"}
        ax.hist(s[:, 0], bins=bins, density=True, **kw)
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.scatter(t[:, 0], t[:, 1], s=2, c=_TARGET_COLOR, linewidths=0, label="target")
        ax.scatter(s[:, 0], s[:, 1], s=2, c=_PARTICLE_COLOR, linewidths=0, label="generated")
        ax.set_xlim(lim[0])
        ax.set_ylim(lim[1])
        ax.set_aspect("equal", adjustable="box")
        ax.legend(loc="upper right", fontsize=8, markerscale=3)
    _xlabel(ax, xlabel)
    ax.set_ylabel(ylabel)
    fig.savefig(path, dpi=100)
    return s, t


def _log_series(ax, steps, values, label, color):
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(steps)
    ok = np.isfinite(v) & (v > 0)
    if ok.any():
        ax.plot(s[ok], v[ok], marker="o", ms=2.5, lw=1.2, color=color, label=label)
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no positive values", ha="center", va="center", transform=ax.transAxes)
    return int((~ok & np.isfinite(v)).sum())


def plot_history(
    history: dict,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    mmd_label: str = "MMD²",
    metric: str = "mmd2",
) -> None:
    """Plots MMD^2 (or KSD^2) and the kinetic energy against the step (log scale), saves a PNG.

    Args:
        history: Dict with ``step``, ``metric`` and optionally ``kinetic`` sequences
            (as returned by :func:`mmdflow.flows.run`).
        path: Output file (PNG).
        title: Optional figure title.
        mmd_label: Y-axis label of the MMD^2 panel (e.g. naming the kernel).
        metric: The history key of the first panel: ``"mmd2"``, or ``"ksd2"`` (a density
            flow's kernel Stein discrepancy).
    """
    steps = np.asarray(history["step"])
    has_kin = "kinetic" in history and np.isfinite(np.asarray(history["kinetic"], float)).any()
    fig, axs = _axes_row(
        [3.4] * (1 + has_kin),
        2.4,
        left=0.85,
        right=0.15,
        bottom=0.55,
        top=0.36 + (0.26 if title else 0.0),
        gap=1.0,
        title=title,
    )
    ksd = metric == "ksd2"
    name = "KSD²" if ksd else "MMD²"
    dropped = _log_series(axs[0], steps, history[metric], name, "#1f77b4")
    _xlabel(axs[0], "step")
    axs[0].set_ylabel(mmd_label)
    _title(axs[0], f"{name} to the {'density' if ksd else 'target'}", 10)
    if dropped:
        axs[0].text(
            0.98,
            0.98,
            f"{dropped} record(s) <= 0 (float32 round-off) not shown",
            ha="right",
            va="top",
            fontsize=7,
            transform=axs[0].transAxes,
        )
    if has_kin:
        _log_series(axs[1], steps, history["kinetic"], "kinetic", "#ff7f0e")
        _xlabel(axs[1], "step")
        axs[1].set_ylabel("mean |Δx|² / step size")
        _title(axs[1], "kinetic energy (last step of each record)", 10)
    for ax in axs:
        ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_critic(history: dict, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Plots an adversarial critic's curves against the step and saves a PNG.

    Args:
        history: Dict with ``step``, ``critic_mmd2`` (the learned kernel's unbiased minibatch
            MMD^2, which the critic maximizes) and ``critic_penalty`` (its penalty term), as
            recorded by :meth:`mmdflow.train.GeneratorTrainer.fit` with a critic.
        path: Output file (PNG).
        title: Optional figure title.
    """
    steps = np.asarray(history["step"])
    fig, axs = _axes_row(
        [3.4, 3.4],
        2.4,
        left=0.95,
        right=0.15,
        bottom=0.55,
        top=0.38 + (0.26 if title else 0.0),
        gap=1.1,
        title=title,
    )
    panels = (
        ("critic_mmd2", "MMD² of the learned kernel", "#1f77b4"),
        ("critic_penalty", "penalty term", "#ff7f0e"),
    )
    for ax, (key, label, color) in zip(axs, panels, strict=True):
        ax.plot(steps, np.asarray(history[key], float), color=color, lw=0.8)
        _xlabel(ax, "step")
        ax.set_ylabel(label)
        _title(ax, f"critic: {label} (minibatch)", 10)
        ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_color_transfer(
    source: np.ndarray,
    target: np.ndarray,
    result: np.ndarray,
    path: str | os.PathLike,
    *,
    titles: Sequence[str] = ("source", "target palette", "result"),
) -> None:
    """Shows source, target and recolored images side by side and saves a PNG.

    Args:
        source: ``[H, W, 3]`` image (``uint8`` or floats in ``[0, 1]``).
        target: ``[H', W', 3]`` image.
        result: ``[H, W, 3]`` recolored source.
        path: Output file (PNG).
        titles: Panel titles.
    """
    imgs = [np.asarray(a) for a in (source, target, result)]
    aspect = [im.shape[1] / im.shape[0] for im in imgs]
    fig, axs = _axes_row(
        [3.3 * a for a in aspect], 3.3, left=0.1, right=0.1, bottom=0.1, top=0.35, gap=0.2
    )
    for ax, im, t in zip(axs, imgs, titles, strict=True):
        ax.imshow(im, interpolation="nearest")
        _title(ax, t, 10)
        ax.set_axis_off()
    fig.savefig(path, dpi=110)
