"""Compare: Pareto views of the zoo (size and MACs against accuracy) and a side-by-side of chosen entries."""

import streamlit as st

from dashboard import charts, data, state
from dashboard.references import references_for

st.title("Compare")
frame = state.table()
if frame.empty:
    state.empty_catalog_help()
    st.stop()

datasets = sorted(frame["dataset"].unique())
dataset = st.segmented_control("Dataset", datasets, default=datasets[0], key="cmp_dataset") or datasets[0]
points = frame[frame["dataset"] == dataset]
refs = references_for({dataset})
st.caption("Filled circles: accuracy measured on this installation; hollow circles: accuracy the file claims. "
           "Stars: published results as their authors report them (claimed, not measured here). "
           "Dotted line: the zoo's frontier (no entry is both smaller and more accurate).")

size_tab, macs_tab = st.tabs(["File size vs accuracy", "MACs vs accuracy"])
with size_tab:
    st.plotly_chart(charts.pareto(points, "size_kb", "file size (KB, log scale)", references=refs,
                                  front=data.pareto_front(points, "size_kb"),
                                  title=f"{dataset}: whole-file size against top-1"), key="pareto_size")
    if refs:
        st.caption("Published points: " + "; ".join(f"{r.method} {r.arch} {r.size_kb} KB at {r.top1_pct} % "
                                                    f"({r.source})" for r in refs))
with macs_tab:
    st.plotly_chart(charts.pareto(points, "macs_sparse_m", "MACs with zero slices skipped (MMACs, log scale)",
                                  front=data.pareto_front(points, "macs_sparse_m"),
                                  title=f"{dataset}: inference MACs against top-1"), key="pareto_macs")
    st.caption("The published results report no MACs, so none are drawn here.")

st.header("Side by side")
default = data.pareto_front(points, "size_kb")["name"].tolist()[:3] or points["name"].tolist()[:2]
chosen = st.multiselect("Entries", frame["name"].tolist(), default=default, max_selections=4, key="cmp_entries")
if len(chosen) < 2:
    st.info("Choose two to four entries to compare them layer by layer.", icon=":material/compare_arrows:")
    st.stop()
with state.friendly_errors("read the model cards"):
    cards = [state.card(n) for n in chosen]
    st.dataframe(data.summary_frame(cards), key="cmp_summary")
    st.subheader("Per layer")
    per_layer = data.compare_layers(cards)
    for arch, rows in per_layer.groupby("arch", sort=False):  # layers of different architectures differ
        st.markdown(f"**{arch}**")
        size_col, sparsity_col = st.columns(2)
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
        st.dataframe(per_layer, hide_index=True, key="cmp_layers", column_config={
            "arch": "Architecture", "entry": "Entry", "layer": "Layer",
            "coded_bytes": st.column_config.NumberColumn("Coded (bytes)", format="%.1f"),
            "conv_slice_sparsity_pct": st.column_config.NumberColumn("Conv slice sparsity (%)", format="%.1f"),
            "weight_sparsity_pct": st.column_config.NumberColumn("Weight sparsity (%)", format="%.1f")})
