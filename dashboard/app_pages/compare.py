"""Compare: Pareto views of the zoo (size and MACs against accuracy) and a side-by-side of chosen entries.

The dataset and the chosen entries live in the URL (``?dataset=mnist&entries=a,b``), so a comparison can be
shared; clicking a point opens its model card.
"""

import streamlit as st

from dashboard import charts, data, state
from dashboard.references import references_for

st.title("Compare")
frame = state.table()
if frame.empty:
    state.empty_catalog_help()
    st.stop()


def open_clicked(event: object) -> None:
    """Open the model card of the point clicked (selected) on a chart."""
    points = event.selection.points if event else []
    if points and points[0].get("customdata"):
        st.switch_page("app_pages/model.py", query_params={"model": points[0]["customdata"][0]})


datasets = sorted(frame["dataset"].unique())
busiest = frame["dataset"].value_counts().index[0]  # without ?dataset=, the dataset with the most entries
wanted = st.query_params.get("dataset")
dataset = st.segmented_control("Dataset", datasets, default=wanted if wanted in datasets else busiest,
                               key="cmp_dataset") or busiest
points = frame[frame["dataset"] == dataset]
refs = references_for({dataset})
st.caption("Click a point to open its model card. Filled circles: accuracy measured on this installation; "
           "hollow circles: accuracy the file claims. Stars: published results as their authors report them "
           "(claimed, not measured here). Thin lines: each architecture's own frontier (e.g. its λ sweep); dotted "
           "line: the zoo's frontier (no entry is both smaller and more accurate).")

size_tab, macs_tab = st.tabs(["File size vs accuracy", "MACs vs accuracy"])
with size_tab:
    open_clicked(st.plotly_chart(
        charts.pareto(points, "size_kb", "file size (KB, log scale)", references=refs,
                      front=data.pareto_front(points, "size_kb"), title=f"{dataset}: whole-file size against top-1"),
        key="pareto_size", on_select="rerun", selection_mode="points"))
    if refs:  # each source cited once, after its points
        sources = dict.fromkeys(r.source for r in refs)
        st.caption("Published points: " + " ".join(
            "; ".join(f"{r.method} {r.arch}: {r.size_kb:,g} KB at {r.top1_pct} %" for r in refs if r.source == s)
            + f" (source: {s})." for s in sources))
with macs_tab:
    open_clicked(st.plotly_chart(
        charts.pareto(points, "macs_sparse_m", "MACs with zero slices skipped (MMACs, log scale)",
                      front=data.pareto_front(points, "macs_sparse_m"),
                      title=f"{dataset}: inference MACs against top-1"),
        key="pareto_macs", on_select="rerun", selection_mode="points"))
    st.caption("The published results report no MACs, so none are drawn here.")

st.header("Side by side")
names = frame["name"].tolist()
from_url = [n for n in st.query_params.get("entries", "").split(",") if n in names][:4]
default = from_url or data.pareto_front(points, "size_kb")["name"].tolist()[:3] or points["name"].tolist()[:2]
chosen = st.multiselect("Entries", names, default=default, max_selections=4, key="cmp_entries")
st.query_params["dataset"] = dataset
st.query_params["entries"] = ",".join(chosen)  # the comparison's address: shareable
if len(chosen) < 2:
    st.info("Choose two to four entries to compare them layer by layer.", icon=":material/compare_arrows:")
    st.stop()
with state.friendly_errors("read the model cards"):
    cards = [state.card(n) for n in chosen]
    st.dataframe(data.summary_frame(cards), key="cmp_summary")
    st.subheader("Recipes: the settings that differ")
    diff = data.recipe_diff(cards)
    if diff.empty:
        st.caption("The recipes of these entries are the same.")
    else:
        st.dataframe(diff, key="cmp_recipes")
    st.subheader("Per layer")
    per_layer = data.compare_layers(cards)
    for arch, rows in per_layer.groupby("arch", sort=False):  # layers of different architectures differ
        st.markdown(f"**{arch}**")
        size_col, sparsity_col = st.columns(2)  # side by side on a wide screen, stacked on a phone
        size_col.plotly_chart(charts.layer_comparison(rows, "coded_bytes", "Coded size per layer", "bytes"),
                              key=f"cmp_size_{arch}")
        if rows["conv_slice_sparsity_pct"].notna().any():  # slices are what sparse inference skips
            sparsity = charts.layer_comparison(rows.dropna(subset=["conv_slice_sparsity_pct"]),
                                               "conv_slice_sparsity_pct", "Zero K×K slices per conv layer",
                                               "% zero K×K slices")
        else:
            sparsity = charts.layer_comparison(rows, "weight_sparsity_pct", "Zero weights per layer (no K×K convs)",
                                               "% zero weights")
        sparsity_col.plotly_chart(sparsity, key=f"cmp_sparsity_{arch}")
    with st.expander("Per-layer table"):
        st.dataframe(per_layer, hide_index=True, key="cmp_layers", placeholder=data.MISSING, column_config={
            "arch": "Architecture", "entry": "Entry", "layer": "Layer",
            "coded_bytes": st.column_config.NumberColumn("Coded (bytes)", format="%.1f"),
            "conv_slice_sparsity_pct": st.column_config.NumberColumn("Conv slice sparsity (%)", format="%.1f"),
            "weight_sparsity_pct": st.column_config.NumberColumn("Weight sparsity (%)", format="%.1f")})
