"""Figures for ``xbc report``: matplotlib (Agg, no pyplot) to PNG bytes, and a small PNG encoder.

Every figure is drawn with a fixed style (:data:`STYLE`, applied on top of matplotlib's own
defaults, so a user's ``matplotlibrc`` or style sheet does not change the output), at
:data:`DPI` dots per inch, and saved without the ``Software`` text chunk, so the same data gives
the same PNG bytes. Crossbar occupancy images are encoded directly from an RGB array
(:func:`png_rgb`: 8-bit RGB, filter 0 on every row, zlib level 9): one image pixel block per
crossbar cell, no resampling.

Layer colors: layer ``i`` (graph order) gets :func:`layer_colors` ``[i]`` in every figure and in
the report's layer table, a 20-color qualitative palette (tab20, dark shades first, then the light
ones) repeated beyond 20 layers. Bit planes get :func:`plane_colors` (turbo, LSB blue to MSB red).
"""

from __future__ import annotations

import base64
import io
import math
import struct
import zlib
from contextlib import contextmanager
from typing import Sequence

import numpy as np

DPI = 100
WIDTH_IN = 10.0  # every figure is 1000 px wide

STYLE = {
    "font.family": "DejaVu Sans",     # ships with matplotlib: same glyphs on every machine
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "axes.grid": False,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "path.simplify": True,
    "svg.hashsalt": "xbc",
}

STEP_COLORS = {"isaac": "#bdbdbd", "dense": "#6baed6", "sliced": "#fd8d3c", "physical": "#2ca25f"}
OK_COLOR = "#4a7fb5"
BAD_COLOR = "#d7301f"
SIGN_COLORS = {1: (33, 102, 172), -1: (178, 24, 43)}   # header strip of occupancy images
ZERO_CELL = (232, 232, 232)    # used row and used column, cell value 0
UNUSED_CELL = (255, 255, 255)  # unused row or unused column


# ----------------------------------------------------------------------------------------
# colors
# ----------------------------------------------------------------------------------------

def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


def layer_colors(n: int) -> list[str]:
    """``n`` layer colors (hex): tab20's dark shades, then its light shades, repeated."""
    from matplotlib import colormaps

    tab = colormaps["tab20"].colors
    order = [tab[i] for i in range(0, 20, 2)] + [tab[i] for i in range(1, 20, 2)]
    return [_hex(order[i % 20]) for i in range(n)]


def plane_colors(n: int) -> list[str]:
    """``n`` bit-plane colors (hex), least significant plane first: the turbo map from dark blue
    (LSB) to dark red (MSB), so significance reads as heat and no plane color is a layer color."""
    from matplotlib import colormaps

    cm = colormaps["turbo"]
    return [_hex(cm(0.08 + 0.87 * (i / (n - 1) if n > 1 else 0.0))) for i in range(n)]


def rgb_of(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def short(name: str, n: int = 30) -> str:
    """A label of at most ``n`` characters (middle ellipsis)."""
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[-(n - n // 2):]


# ----------------------------------------------------------------------------------------
# PNG output
# ----------------------------------------------------------------------------------------

@contextmanager
def style():
    """matplotlib's defaults plus :data:`STYLE`, restored afterwards."""
    import matplotlib as mpl

    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update(STYLE)
        yield


def new_figure(height_in: float, width_in: float = WIDTH_IN):
    """A pyplot-free Agg figure (no global state, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def fig_png(fig) -> bytes:
    """Figure -> PNG bytes (deterministic: no Software/date metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def png_rgb(rgb: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` -> PNG bytes (8-bit truecolor, no metadata)."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _layer_ticks(ax, labels: list[str], colors: list[str]) -> None:
    """Layer names on the y axis, each with a square of its layer color left of the name."""
    y = np.arange(len(labels))
    ax.set_yticks(y, [short(s) + "  " for s in labels])
    ax.tick_params(axis="y", length=0, pad=12)
    tr = ax.get_yaxis_transform()
    ax.scatter(np.full(len(y), -0.012), y, s=30, c=colors, marker="s", transform=tr, clip_on=False,
               zorder=5, linewidths=0)
    ax.set_ylim(len(labels) - 0.5, -0.5)


def _rows_height(n: int, per: float, extra: float, lo: float = 2.4) -> float:
    return max(lo, extra + per * n)


# ----------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------

def crossbar_steps(layer_ids: list[str], colors: list[str], steps: list[tuple[str, str, list]],
                   bound: list | None = None) -> bytes:
    """Horizontal grouped bars: crossbars per layer for each step ``(key, label, counts)``;
    ``None`` counts are left out. Log scale when the counts span more than a factor 30.
    ``bound``: per layer a lower bound drawn as a black tick on the last step's bar."""
    n = len(layer_ids)
    with style():
        fig = new_figure(_rows_height(n, 0.08 + 0.065 * len(steps), 1.3))
        ax = fig.add_subplot()
        vals = np.array([[np.nan if v is None else float(v) for v in c] for _, _, c in steps], float)
        pos = vals[np.isfinite(vals) & (vals > 0)]
        log = pos.size > 0 and pos.max() / pos.min() > 30
        k = len(steps)
        h = 0.8 / k
        annotate = n <= 30
        for s, (key, label, _) in enumerate(steps):
            y = np.arange(n) - 0.4 + h * (s + 0.5)
            v = vals[s]
            ok = np.isfinite(v)
            ax.barh(y[ok], v[ok], height=h * 0.92, color=STEP_COLORS.get(key, "#888888"), label=label)
            if annotate:
                for yi, vi in zip(y[ok], v[ok]):
                    ax.text(vi if vi > 0 else (0.8 if log else 0), yi, f" {int(vi):,}", va="center",
                            fontsize=6.5, color="#333333")
        if bound is not None:
            y = np.arange(n) - 0.4 + h * (k - 0.5)
            bv = np.array([np.nan if v is None else float(v) for v in bound])
            ok = np.isfinite(bv) & (bv > 0)
            ax.scatter(bv[ok], y[ok], marker="|", s=(72 * h * 0.3 * 1.1) ** 2 * 4, color="black", linewidths=1.6,
                       zorder=4, label="squeeze lower bound")
        ax.margins(x=0.12)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(left=0.8)
        else:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _layer_ticks(ax, layer_ids, colors)
        ax.xaxis.grid(True, which="major")
        if n > 20:  # a tall chart: tick labels on top as well
            ax.tick_params(axis="x", top=True, labeltop=True)
        ax.set_xlabel("physical crossbars per layer" + (" (log scale)" if log else ""))
        H = fig.get_figheight()
        fig.suptitle("Crossbars per layer before and after each sparsity step", fontsize=11, fontweight="bold",
                     y=1 - 0.08 / H, va="top")
        hl = ax.get_legend_handles_labels()
        order = sorted(range(len(hl[1])), key=lambda i: hl[1][i] == "squeeze lower bound")
        fig.legend([hl[0][i] for i in order], [hl[1][i] for i in order], loc="upper center", bbox_to_anchor=(0.5, 1 - 0.36 / H),
                   ncol=k + (bound is not None), fontsize=8)
        fig.subplots_adjust(left=0.2, right=0.97, top=1 - 0.7 / H, bottom=0.5 / H)
        return fig_png(fig)


def bits_heatmap(layer_ids: list[str], colors: list[str], col_labels: list[str], density: np.ndarray,
                 sign_split: int | None) -> bytes:
    """Layers x (sign, plane) heatmap of non-zero cell density; the last row is all layers.
    ``sign_split``: column index where the negative columns start (a separator line)."""
    n, k = density.shape
    with style():
        W, H = max(6.0, min(WIDTH_IN, 3.2 + 0.5 * k)), _rows_height(n, 0.26, 1.6)
        fig = new_figure(H, W)
        left, right, top, bottom = 2.0, 1.2, 0.45, 0.6     # inches: names | cells | colorbar and its label
        ax = fig.add_axes((left / W, bottom / H, (W - left - right) / W, (H - top - bottom) / H))
        cax = fig.add_axes((1 - (right - 0.2) / W, bottom / H, 0.15 / W, (H - top - bottom) / H))
        vmax = max(float(np.nanmax(density)) if density.size else 0.0, 1e-3)
        im = ax.imshow(density, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        if n <= 60 and k <= 24:
            for (i, j), v in np.ndenumerate(density):
                if np.isfinite(v):
                    txt = "0" if v == 0 else (f"{100 * v:.0f}" if v >= 0.0995 else f"{100 * v:.1f}")
                    ax.text(j, i, txt, ha="center", va="center", fontsize=6.5,
                            color="black" if v > 0.6 * vmax else "white")
        ax.set_xticks(np.arange(k), col_labels)
        ax.tick_params(axis="x", length=0, labelsize=8)
        _layer_ticks(ax, layer_ids, colors)
        ax.axhline(n - 1.5, color="white", linewidth=2.5)
        if sign_split is not None and 0 < sign_split < k:
            ax.axvline(sign_split - 0.5, color="white", linewidth=2.5)
        ax.set_xlabel("bit plane (+: positive-digit columns, −: negative-digit columns; MSB left)"
                      if sign_split is not None else "bit plane (MSB left)")
        ax.set_title("Non-zero cells per bit plane (% of the layer's weights)")
        for s in ax.spines.values():
            s.set_visible(False)
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("non-zero cells / weights")
        cb.ax.yaxis.set_major_formatter(_pct_formatter())
        return fig_png(fig)


def _pct_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{100 * v:.0f}%")


def tile_map(tiles: dict[int, list[tuple[int, int]]], replicas: dict[int, int], mesh_cols: int,
             capacity: int, n_tiles: int, layer_ids: list[str], colors: list[str]) -> bytes:
    """The tile mesh: one square per tile (row-major, ``mesh_cols`` wide), filled from the left
    with one band per layer (width = its crossbars / capacity), utilization % written inside.
    ``tiles``: tile -> [(layer index, crossbars)] including weight-duplication replicas;
    ``replicas``: tile -> replica crossbars (hatched)."""
    from matplotlib import patheffects
    from matplotlib.patches import Patch, Rectangle

    used = sorted(tiles)
    rows_shown = max(1, (max(used) // mesh_cols + 1) if used else 1)
    last_col = max((t % mesh_cols for t in used), default=0)
    cols_shown = min(mesh_cols, max(8, last_col + 2))   # the used part of the mesh, and a free column
    side = min(0.6, (WIDTH_IN - 1.0) / cols_shown)
    pct = "%" if side >= 0.38 else ""
    legend = len(layer_ids) <= 18
    leg_h = 0.22 * math.ceil((len(layer_ids) + bool(replicas)) / 6) + 0.1 if legend else 0.0
    top, bottom = 0.72, 0.15 + leg_h
    H = top + bottom + side * rows_shown
    with style():
        fig = new_figure(H)
        ax = fig.add_axes((0.6 / WIDTH_IN, bottom / H, side * cols_shown / WIDTH_IN, side * rows_shown / H))
        fs = max(5.5, min(8.0, 20.0 * side))
        stroke = [patheffects.withStroke(linewidth=2, foreground="white")]
        for r, c in np.ndindex(rows_shown, cols_shown):
            t = r * mesh_cols + c
            if t >= n_tiles:
                break
            ax.add_patch(Rectangle((c + 0.05, r + 0.05), 0.9, 0.9, facecolor="#f4f4f4", edgecolor="#d0d0d0",
                                   linewidth=0.5))
            if t not in tiles:
                continue
            x0 = c + 0.05
            total = 0
            for li, cnt in tiles[t]:
                w = 0.9 * min(cnt, capacity) / capacity
                ax.add_patch(Rectangle((x0, r + 0.05), w, 0.9, facecolor=colors[li], edgecolor="none"))
                x0 += w
                total += cnt
            if replicas.get(t):
                ax.add_patch(Rectangle((c + 0.05, r + 0.05), 0.9, 0.9, facecolor="none", edgecolor="#333333",
                                       hatch="///", linewidth=0.0))
            ax.add_patch(Rectangle((c + 0.05, r + 0.05), 0.9, 0.9, facecolor="none", edgecolor="#444444",
                                   linewidth=0.9))
            ax.text(c + 0.5, r + 0.5, f"{100 * total / capacity:.0f}{pct}", ha="center", va="center",
                    fontsize=fs, path_effects=stroke)
        ax.set_xlim(0, cols_shown)
        ax.set_ylim(rows_shown, 0)
        step = 1 if cols_shown <= 16 else (4 if cols_shown <= 64 else 8)
        ax.set_xticks(np.arange(0, cols_shown, step) + 0.5, [str(i) for i in range(0, cols_shown, step)])
        rstep = 1 if rows_shown <= 16 else 4
        ax.set_yticks(np.arange(0, rows_shown, rstep) + 0.5, [str(i) for i in range(0, rows_shown, rstep)])
        ax.tick_params(length=0, labelsize=7)
        for sp in ax.spines.values():
            sp.set_visible(False)
        ax.set_xlabel("mesh column" + (f" (columns 0-{cols_shown - 1} of {mesh_cols} shown)"
                                       if cols_shown < mesh_cols else ""), fontsize=8)
        ax.set_ylabel("mesh row", fontsize=8)
        ax.xaxis.set_label_position("top")
        ax.xaxis.tick_top()
        fig.suptitle(f"Tile map: {len(used)} of {n_tiles} tiles used ({capacity} crossbars each; "
                     f"numbers: utilization{' %' if not pct else ''})",
                     fontsize=11, fontweight="bold", x=0.6 / WIDTH_IN, ha="left", y=1 - 0.06 / H, va="top")
        if legend:
            handles = [Patch(facecolor=colors[i], label=short(layer_ids[i], 22)) for i in range(len(layer_ids))]
            if replicas:
                handles.append(Patch(facecolor="white", edgecolor="#333333", hatch="///", label="holds replicas"))
            fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.6 / WIDTH_IN, 0.08 / H), ncol=6,
                       fontsize=7.5, handlelength=1.2, columnspacing=1.5)
        return fig_png(fig)


def tile_bars(tiles: dict[int, list[tuple[int, int]]], capacity: int, layer_ids: list[str],
              colors: list[str]) -> bytes:
    """Crossbars on each used tile, stacked by layer, against the tile's capacity."""
    used = sorted(tiles)
    n = len(used)
    slots = max(n, 6)
    with style():
        fig = new_figure(3.0, max(6.5, min(WIDTH_IN, 2.0 + 0.3 * slots)))
        ax = fig.add_subplot()
        x = np.arange(n)
        xs, hs, bs, cs = [], [], [], []   # one segment per (tile, layer), drawn in one call
        for k, t in enumerate(used):
            b = 0
            for li, cnt in tiles[t]:
                xs.append(k), hs.append(cnt), bs.append(b), cs.append(colors[li])
                b += cnt
        ax.bar(xs, hs, bottom=bs, width=0.85, color=cs, linewidth=0)
        ax.axhline(capacity, color=BAD_COLOR, linestyle="--", linewidth=1.1)
        step = max(1, math.ceil(n / 40))
        ax.set_xticks(x[::step], [str(t) for t in used[::step]], rotation=90 if n > 20 else 0)
        ax.set_xlim(-0.6, slots - 0.4)
        ax.set_ylim(0, capacity * 1.12)
        ax.yaxis.grid(True)
        ax.set_xlabel("tile id (used tiles only)")
        ax.set_ylabel("crossbars on the tile")
        ax.set_title(f"Crossbars per used tile, by layer (dashed: capacity {capacity})")
        fig.subplots_adjust(left=0.8 / fig.get_figwidth(), right=0.98, top=0.89, bottom=0.2 if n > 20 else 0.16)
        return fig_png(fig)


def adc_histogram(hist_by_layer: np.ndarray, bits: np.ndarray, available: int, layer_ids: list[str],
                  colors: list[str]) -> bytes:
    """Columns per needed ADC resolution, stacked by layer; bars above ``available`` hatched red."""
    with style():
        fig = new_figure(3.6)
        ax = fig.add_subplot()
        base = np.cumsum(hist_by_layer, axis=0) - hist_by_layer           # [L, B] bottom of each segment
        li, bi = np.nonzero(hist_by_layer)                                 # one call for all segments
        ax.bar(bits[bi], hist_by_layer[li, bi], bottom=base[li, bi], width=0.8, color=[colors[i] for i in li],
               edgecolor="white", linewidth=0.3)
        bottom = hist_by_layer.sum(axis=0).astype(float)
        if hist_by_layer.shape[0] <= 16:
            from matplotlib.patches import Patch

            handles = [Patch(facecolor=colors[i], label=short(layer_ids[i], 24)) for i in range(hist_by_layer.shape[0])]
        else:
            handles = []
        over = bits > available
        if over.any():
            handles.append(ax.bar(bits[over], bottom[over], width=0.8, facecolor="none", edgecolor=BAD_COLOR,
                                  hatch="///", linewidth=1.2, label="more than the ADC has (clips)"))
        for b, tot in zip(bits, bottom):
            if tot > 0:
                ax.text(b, tot, f"{int(tot):,}", ha="center", va="bottom", fontsize=7)
        ax.axvline(available + 0.5, color=BAD_COLOR, linestyle="--", linewidth=1.2)
        ymax = bottom.max() if bottom.size else 1
        ax.text(available + 0.45, ymax * 1.1, f"target ADC: {available} bits  ", ha="right", va="top",
                color=BAD_COLOR, fontsize=8)
        lo = min(int(bits.min()) if bits.size else 1, available) - 1
        hi = max(int(bits.max()) if bits.size else 1, available) + 1
        ax.set_xlim(lo + 0.4, hi - 0.4 + 0.2)
        ax.set_ylim(0, ymax * 1.15 + 1)
        ax.set_xticks(np.arange(lo + 1, hi))
        ax.yaxis.grid(True)
        ax.set_xlabel("ADC bits the column needs (largest possible column sum)")
        ax.set_ylabel("physical columns")
        ax.set_title(f"ADC resolution needed, all {int(hist_by_layer.sum()):,} used columns")
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5)
        fig.subplots_adjust(left=0.08, right=0.8, top=0.9, bottom=0.14)
        return fig_png(fig)


def adc_per_layer(layer_ids: list[str], colors: list[str], max_bits: list[int | None], available: int) -> bytes:
    """Per layer, the most ADC bits any of its columns needs, against the target's ADC."""
    n = len(layer_ids)
    with style():
        fig = new_figure(_rows_height(n, 0.2, 1.1, lo=1.8))
        ax = fig.add_subplot()
        v = np.array([np.nan if b is None else b for b in max_bits], float)
        ok = np.isfinite(v)
        y = np.arange(n)
        ax.barh(y[ok], v[ok], height=0.7, color=[colors[i] for i in np.flatnonzero(ok)])
        for yi, vi in zip(y[ok], v[ok]):
            ax.text(vi, yi, f" {int(vi)}", va="center", fontsize=7, color=BAD_COLOR if vi > available else "#333333",
                    fontweight="bold" if vi > available else "normal")
        ax.axvline(available, color=BAD_COLOR, linestyle="--", linewidth=1.2, label=f"target ADC: {available} bits")
        _layer_ticks(ax, layer_ids, colors)
        top = max(float(np.nanmax(v)) if ok.any() else 0.0, available) + 1.5
        ax.set_xlim(0, top)
        ax.xaxis.grid(True)
        ax.set_xlabel("most ADC bits needed by a column of the layer")
        ax.set_title("ADC bits needed per layer")
        ax.legend(loc="lower right")
        fig.subplots_adjust(left=0.2, right=0.97, top=1 - 0.4 / fig.get_figheight(), bottom=0.45 / fig.get_figheight())
        return fig_png(fig)


def sqnr_bars(layer_ids: list[str], colors: list[str], sqnr: list[float | None], output_sqnr: float | None) -> bytes:
    """Per-layer SQNR (dB) of the simulated crossbar output against the float model."""
    from matplotlib import patheffects

    n = len(layer_ids)
    with style():
        fig = new_figure(_rows_height(n, 0.22, 1.2, lo=2.0))
        ax = fig.add_subplot()
        v = np.array([np.nan if s is None else s for s in sqnr], float)
        finite = v[np.isfinite(v)]
        cap = (finite.max() if finite.size else 60.0) + 10.0
        for i in range(n):
            if np.isnan(v[i]):
                ax.text(0.5, i, " no data", va="center", fontsize=7, color="#777777")
                continue
            val = cap if np.isinf(v[i]) and v[i] > 0 else v[i]
            ax.barh(i, val, height=0.7, color=colors[i])
            ax.text(max(val, 0), i, " ∞ (exact)" if np.isinf(v[i]) else f" {v[i]:.1f}", va="center", fontsize=7,
                    path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")], zorder=5)
        if output_sqnr is not None and np.isfinite(output_sqnr):
            ax.axvline(output_sqnr, color="#333333", linestyle=":", linewidth=1.2,
                       label=f"model output: {output_sqnr:.1f} dB")
            ax.legend(loc="lower right")
        _layer_ticks(ax, layer_ids, colors)
        lo = min(0.0, float(finite.min()) - 3 if finite.size else 0.0)
        ax.set_xlim(lo, cap + 8)
        ax.xaxis.grid(True)
        ax.set_xlabel("SQNR of the layer's simulated output vs the float model (dB, higher is better)")
        ax.set_title("Per-layer fidelity (simulation)")
        fig.subplots_adjust(left=0.2, right=0.97, top=1 - 0.4 / fig.get_figheight(), bottom=0.5 / fig.get_figheight())
        return fig_png(fig)


def crossbar_image(cells: np.ndarray, row_used: np.ndarray, col_shift: np.ndarray, col_sign: np.ndarray,
                   cell_bits: int, planes: list[str], scale: int, header: int = 4) -> bytes:
    """One crossbar as a PNG: ``scale`` x ``scale`` pixels per cell. A non-zero cell has the color
    of its column's bit plane (``shift // cell_bits``; lighter for smaller multi-bit values), a zero
    cell of a used row and used column is light gray, unused rows/columns are white. A strip of
    ``header`` pixel rows on top marks each column's sign (blue +, red −, white unused)."""
    Rx, Cx = cells.shape
    col_used = col_sign != 0
    pal = np.array([rgb_of(c) for c in planes], np.float64)
    plane = np.clip(col_shift // max(cell_bits, 1), 0, len(planes) - 1)
    vmax = (1 << cell_bits) - 1
    frac = 0.35 + 0.65 * cells.astype(np.float64) / vmax                    # [Rx, Cx]
    col_rgb = pal[plane]                                                     # [Cx, 3]
    nz_rgb = 255.0 - frac[..., None] * (255.0 - col_rgb[None, :, :])        # blend with white
    img = np.empty((Rx, Cx, 3), np.float64)
    img[:] = UNUSED_CELL
    used = row_used[:, None] & col_used[None, :]
    img[used] = ZERO_CELL
    nz = cells != 0
    img[nz] = nz_rgb[nz]
    strip = np.empty((header, Cx, 3), np.float64)
    strip[:] = UNUSED_CELL
    strip[:, col_sign > 0] = SIGN_COLORS[1]
    strip[:, col_sign < 0] = SIGN_COLORS[-1]
    gap = np.full((1, Cx, 3), 255.0)
    big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    top = np.repeat(np.concatenate([strip, gap]), scale, axis=1)
    return png_rgb(np.rint(np.concatenate([top, big])).astype(np.uint8))
