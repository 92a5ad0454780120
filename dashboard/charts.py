"""Plotly figures for the dashboard. Each takes a frame (from ``dashboard.data``) and returns a Figure
whose axes carry their units."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.references import Reference
from zoo.formatting import percent

FONT = dict(family="Inter, system-ui, sans-serif", size=13)
REFERENCE_COLOUR = "#444444"
ZERO_COLOUR, KEPT_COLOUR = "#eef1f5", "#1f4e8c"


PALETTE = px.colors.qualitative.D3


def _layout(fig: go.Figure, *, height: int = 420, legend_below: bool = True) -> go.Figure:
    """Common look; the legend sits under the axis titles (in the figure's bottom margin)."""
    fig.update_layout(height=height, font=FONT, margin=dict(l=10, r=10, t=50, b=100 if legend_below else 10),
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.01, x=0,
                                  title_text="") if legend_below else None)
    return fig


def pareto(frame: pd.DataFrame, x: str, x_title: str, *, references: Sequence[Reference] = (),
           front: pd.DataFrame | None = None, title: str = "") -> go.Figure:
    """Accuracy (y, %) against ``x`` on a log axis, one colour per architecture, the frontier as a line
    and published (claimed) points as hollow stars."""
    points = frame.dropna(subset=[x, "top1_pct"])
    fig = px.scatter(points, x=x, y="top1_pct", color="arch", log_x=True, symbol="accuracy_source",
                     color_discrete_sequence=PALETTE,
                     symbol_map={"measured": "circle", "claimed": "circle-open"},
                     hover_name="name", title=title, custom_data=["name"],
                     hover_data={"arch": False, "dataset": True, "accuracy_source": True, x: ":.3f",
                                 "top1_pct": ":.2f"},
                     labels={x: x_title, "top1_pct": "Top-1 accuracy (%)", "arch": "Architecture",
                             "accuracy_source": "accuracy"})
    fig.update_traces(marker=dict(size=11, line=dict(width=1.5)))
    for trace in list(fig.data):  # each architecture's own frontier (e.g. its λ sweep), small to large
        curve = _rising(list(zip(trace.x, trace.y, strict=True)))
        if len(curve) > 1:
            fig.add_trace(go.Scatter(x=[p[0] for p in curve], y=[p[1] for p in curve], mode="lines",
                                     line=dict(color=trace.marker.color, width=1), opacity=0.6,
                                     hoverinfo="skip", showlegend=False))
    if front is not None and len(front) > 1:
        fig.add_trace(go.Scatter(x=front[x], y=front["top1_pct"], mode="lines", name="frontier (zoo)",
                                 line=dict(color="#888", dash="dot", shape="hv"), hoverinfo="skip"))
    rightmost = max((r.size_kb for r in references), default=None)
    for ref in references:  # the rightmost label runs left, so a narrow chart does not cut it off
        fig.add_trace(go.Scatter(
            x=[ref.size_kb], y=[ref.top1_pct], mode="markers+text", name=legend_name(ref.label),
            text=[f"{ref.method} {ref.arch}"], textfont=dict(size=11), cliponaxis=False,
            textposition="top left" if ref.size_kb == rightmost and len(references) > 1 else "top center",
            marker=dict(symbol="star-open", size=15, color=REFERENCE_COLOUR, line=dict(width=2)),
            hovertemplate=(f"<b>{ref.label}</b><br>%{{x:.2f}} KB at %{{y:.1f}} %<br>source: {ref.source}"
                           "<extra></extra>")))
    xs = [*points[x].tolist(), *(r.size_kb for r in references)]
    if xs and min(xs) > 0:  # room for the labels at both ends of the log axis
        lo, hi = np.log10(min(xs)), np.log10(max(xs))
        pad = max(0.12, 0.15 * (hi - lo))
        fig.update_xaxes(range=[lo - pad, hi + pad])
    fig.update_xaxes(title=x_title, dtick=1, tickformat=",~g")  # log axis: one label per decade (1, 10, 100)
    fig.update_yaxes(title="Top-1 accuracy (%)")
    return _layout(fig, height=480)


def _rising(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no smaller point beats or matches in accuracy, by size: a frontier."""
    curve: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not curve or y > curve[-1][1]:
            curve.append((x, y))
    return curve


def legend_name(label: str, width: int = 30) -> str:
    """``label`` broken into lines of at most ``width`` characters: a horizontal legend does not wrap its items,
    so a long one would run past the right edge of a phone-wide chart."""
    return "<br>".join(textwrap.wrap(label, width)) or label


def _layer_height(count: int) -> int:
    return max(300, 140 + 26 * count)


def layer_size_bars(layers: pd.DataFrame) -> go.Figure:
    """Coded and estimated bytes per layer (horizontal bars, layers top to bottom)."""
    fig = go.Figure()
    fig.add_trace(go.Bar(y=layers["layer"], x=layers["coded_bytes"], orientation="h", name="coded",
                         marker_color="#1f4e8c", hovertemplate="%{y}: %{x:,.0f} bytes<extra></extra>"))
    fig.add_trace(go.Bar(y=layers["layer"], x=layers["estimated_bytes"], orientation="h", name="estimated",
                         marker_color="#9db7dd", hovertemplate="%{y}: %{x:,.0f} bytes (estimated)<extra></extra>"))
    fig.update_layout(title="Coded size per layer")
    fig.update_xaxes(title_text="bytes")
    fig.update_yaxes(autorange="reversed", automargin=True)
    return _layout(fig, height=_layer_height(len(layers)))


def layer_sparsity_bars(layers: pd.DataFrame) -> go.Figure:
    """Per layer: zero K×K slices (K×K convolutions only) and zero weights, in %."""
    fig = go.Figure()
    fig.add_trace(go.Bar(y=layers["layer"], x=layers["conv_slice_sparsity_pct"], orientation="h",
                         name="zero K×K slices (K×K convs)", marker_color="#d9822b",
                         hovertemplate="%{y}: %{x:.1f} % of K×K slices zero<extra></extra>"))
    fig.add_trace(go.Bar(y=layers["layer"], x=layers["weight_sparsity_pct"], orientation="h", name="zero weights",
                         marker_color="#f2c18d", hovertemplate="%{y}: %{x:.1f} % of weights zero<extra></extra>"))
    fig.update_layout(title="Sparsity per layer")
    fig.update_xaxes(title_text="% zero", range=[0, 100])
    fig.update_yaxes(autorange="reversed", automargin=True)
    return _layout(fig, height=_layer_height(len(layers)))


def layer_comparison(layers: pd.DataFrame, column: str, title: str, axis: str) -> go.Figure:
    """``column`` per layer of one architecture, one bar colour per entry (rows of
    ``dashboard.data.compare_layers`` for entries of that architecture)."""
    fig = go.Figure()
    for (entry, rows), colour in zip(layers.groupby("entry", sort=False), PALETTE, strict=False):
        fig.add_trace(go.Bar(y=rows["layer"], x=rows[column], name=entry, marker_color=colour, orientation="h",
                             hovertemplate=f"{entry}<br>%{{y}}: %{{x:,.1f}}<extra></extra>"))
    fig.update_layout(barmode="group", title=title)
    fig.update_xaxes(title_text=axis, **({"range": [0, 100]} if axis.startswith("%") else {}))
    fig.update_yaxes(autorange="reversed", automargin=True)
    count = layers["layer"].nunique() * max(1, layers["entry"].nunique())
    rows = max(14 * count, 20 * layers["layer"].nunique())  # at least 20 px a layer: plotly shows every name
    return _layout(fig, height=max(300, 140 + rows))


DEPTHWISE_ROW = 32  # channels per row of a depthwise layer's map


def depthwise_grid(mask: np.ndarray, layer: str) -> go.Figure:
    """A depthwise conv (one K×K kernel per channel): its channels as a grid of cells, 32 to a row."""
    channels = mask.shape[0]
    width = min(DEPTHWISE_ROW, channels)
    rows = -(-channels // width)
    grid = np.full(rows * width, np.nan)
    grid[:channels] = (~mask[:, 0]).astype(float)
    index = np.arange(rows * width).reshape(rows, width)
    state = np.where(np.isnan(grid), "", np.where(grid == 1, "non-zero", "zero (skipped)")).reshape(rows, width)
    fig = go.Figure(go.Heatmap(
        z=grid.reshape(rows, width), zmin=0, zmax=1, colorscale=[[0, ZERO_COLOUR], [1, KEPT_COLOUR]],
        showscale=False, xgap=2, ygap=2, customdata=np.dstack([index, state]),
        hovertemplate="channel %{customdata[0]}: %{customdata[1]}<extra></extra>"))
    zero = int(mask.sum())
    fig.update_layout(title=f"{layer} (depthwise)<br><sup>{zero:,} of {channels:,} channel kernels zero "
                            f"({percent(zero / channels, 1)}); dark = kept, light = zero</sup>")
    fig.update_xaxes(title="+ channel", showgrid=False, zeroline=False)
    shown = range(0, rows, max(1, rows // 8))
    fig.update_yaxes(title="first channel of the row", autorange="reversed", showgrid=False, zeroline=False,
                     tickvals=list(shown), ticktext=[str(r * width) for r in shown])
    return _layout(fig, height=min(640, max(220, 120 + 28 * rows)), legend_below=False)


def slice_heatmap(mask: np.ndarray, layer: str) -> go.Figure:
    """Which K×K slices of a conv are zero: filters (rows) × input channels (columns); a depthwise conv
    (one input channel per filter) as :func:`depthwise_grid`."""
    if mask.shape[1] == 1:
        return depthwise_grid(mask, layer)
    filters, channels = mask.shape
    fig = go.Figure(go.Heatmap(
        z=(~mask).astype(int), x=list(range(channels)), y=list(range(filters)), zmin=0, zmax=1, colorscale=[[0, ZERO_COLOUR], [1, KEPT_COLOUR]],
        showscale=False, xgap=1, ygap=1,
        customdata=np.where(mask, "zero (skipped)", "non-zero"),
        hovertemplate="filter %{y}, input channel %{x}: %{customdata}<extra></extra>"))
    zero = int(mask.sum())
    fig.update_layout(title=f"{layer}<br><sup>{zero:,} of {mask.size:,} K×K slices zero "
                            f"({percent(zero / mask.size, 1)}); dark = kept, light = zero</sup>")
    fig.update_xaxes(title="input channel", showgrid=False, zeroline=False, dtick=max(1, channels // 25))
    fig.update_yaxes(title="filter (output channel)", autorange="reversed", showgrid=False, zeroline=False,
                     dtick=max(1, filters // 25))
    return _layout(fig, height=min(640, max(260, 90 + 14 * filters)), legend_below=False)


def parts_bar(parts: pd.DataFrame) -> go.Figure:
    """The file's parts as one stacked horizontal bar, in bytes, each labelled with its share."""
    fig = go.Figure()
    for row, colour in zip(parts.itertuples(), PALETTE, strict=False):
        share = row.share_pct / 100
        fig.add_trace(go.Bar(y=["file"], x=[row.bytes], orientation="h", name=f"{row.part}: {row.bytes:,} B",
                             marker_color=colour, text=[percent(share, 0) if share >= 0.04 else ""],
                             textposition="inside",
                             hovertemplate=f"{row.part}: {row.bytes:,} bytes ({percent(share, 1)})<extra></extra>"))
    fig.update_layout(barmode="stack", legend_traceorder="normal")
    fig.update_xaxes(title="bytes")
    fig.update_yaxes(showticklabels=False)
    return _layout(fig, height=260)


def benchmark_bars(results: pd.DataFrame) -> go.Figure:
    """Median latency (ms per batch, log scale) per variant, grouped by batch × threads, one panel per entry;
    whiskers reach the 90th percentile."""
    frame = results.assign(setting=lambda f: "batch " + f["batch"].astype(str) + " · "
                           + f["threads"].astype(str) + " thr",
                           to_p90=lambda f: (f["p90_ms"] - f["median_ms"]).clip(lower=0), none=0.0)
    fig = px.bar(frame, x="setting", y="median_ms", color="variant", barmode="group", facet_col="name",
                 error_y="to_p90", error_y_minus="none", log_y=True, color_discrete_sequence=PALETTE,
                 hover_data={"p90_ms": ":.3f", "speedup_vs_dense": ":.2f", "to_p90": False, "none": False},
                 labels={"median_ms": "median latency (ms per batch, log)", "setting": "batch size · threads",
                         "variant": "variant", "name": "", "p90_ms": "p90 (ms)",
                         "speedup_vs_dense": "speed-up vs dense (×)"},
                 category_orders={"variant": ["dense", "slim", "sparse", "onnxruntime"]})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_yaxes(**log_ticks(frame["median_ms"]))
    return _layout(fig, height=440)


def log_ticks(values: pd.Series) -> dict:
    """Tick values 1, 2, 5 × 10^k spanning ``values``, labelled in plain numbers (a log axis's own labels repeat
    "2, 5" in every decade without the decade)."""
    positive = values[values > 0]
    if positive.empty:
        return {}
    low, high = int(np.floor(np.log10(positive.min()))), int(np.ceil(np.log10(positive.max())))
    steps = (1, 2, 5) if high - low <= 2 else (1,)  # wide ranges: decades only, so labels never crowd
    ticks = [m * 10.0 ** e for e in range(low, high + 1) for m in steps]
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def history_latency(history: pd.DataFrame) -> go.Figure:
    """Stored medians over time, one line per variant and setting (log scale)."""
    frame = history.sort_values("measured_at").assign(
        run=lambda f: f["measured_at"].dt.strftime("%Y-%m-%d %H:%M"),  # one benchmark run's rows share a minute
        setting=lambda f: f["variant"] + " · batch " + f["batch"].astype(str) + " · " + f["threads"].astype(str)
        + " thr")
    fig = px.line(frame, x="run", y="median_ms", color="setting", markers=True, log_y=True,
                  color_discrete_sequence=PALETTE,
                  labels={"run": "run (UTC)", "median_ms": "ms per batch (log)",
                          "setting": "variant · batch · threads"})
    fig.update_yaxes(**log_ticks(frame["median_ms"]))
    fig.update_xaxes(type="category")  # one position per run, evenly spaced, labelled by its minute
    return _layout(fig, height=380)


HISTORY_PANELS = (  # (column, scale, trace name, (row, col)) of the recorded per-epoch figures
    ("top1", 100, "test top-1 (%)", (1, 1)), ("train_task", 1, "train loss", (1, 2)),
    ("test_loss", 1, "test loss", (1, 2)), ("est_bytes", 1 / 1000, "estimated latents (KB)", (2, 1)),
    ("conv_slice_sparsity", 100, "zero K×K slices (%)", (2, 2)), ("weight_sparsity", 100, "zero weights (%)", (2, 2)))


def history_lines(history: pd.DataFrame) -> go.Figure:
    """Training curves per epoch, where recorded: test top-1, train and test loss, estimated latents, sparsity;
    2 × 2 panels (four in a row leave a phone ~70 px a panel)."""
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.2, horizontal_spacing=0.12,
                        subplot_titles=("Test top-1 (%)", "Loss", "Est. latents (KB)", "Sparsity (%)"))
    for (column, scale, name, (row, col)), colour in zip(HISTORY_PANELS, PALETTE, strict=False):
        if column in history:  # the second line of a panel dashed: its two lines often run together
            second = column in ("test_loss", "weight_sparsity")
            fig.add_trace(go.Scatter(x=history["epoch"], y=scale * history[column], name=name, mode="lines+markers",
                                     line=dict(color=colour, dash="dash" if second else "solid")), row, col)
    epochs = int(history["epoch"].max()) if "epoch" in history and len(history) else 1
    step = next(s for s in (m * 10**e for e in range(6) for m in (1, 2, 5)) if epochs / s <= 8)
    fig.update_xaxes(title_text="epoch", title_standoff=4, dtick=step)  # whole epochs, at most ~8 ticks
    return _layout(fig, height=620)
