"""Browse: what LilNetX is in two lines, then the zoo as a sortable, filterable table; select a row to open its
model card."""

import streamlit as st

from dashboard import data, state

if "model" in st.query_params:  # back from a model card: Browse has no model
    del st.query_params["model"]

st.title("LilNetX Zoo")
st.markdown(
    "Tiny networks whose weights are entropy-coded and structurally sparse "
    "([LilNetX, ICLR 2023](https://arxiv.org/abs/2204.02965)): each `.lnx` file decodes into an ordinary "
    "PyTorch model, and sparse inference skips its zero kernel slices.  \n"
    "**Start here:** select a row below to open its model card and download it; "
    '<a href="./compare" target="_self">Compare</a> size against accuracy; '
    '<a href="./benchmark" target="_self">Benchmark</a> a model on this machine.', unsafe_allow_html=True)
st.caption("Every figure is computed from the model's `.lnx` file. Sizes are whole files (1 KB = 1,000 bytes); "
           "accuracy is marked *measured* (on this installation) or *claimed* (by the file).")

frame = state.table()
if frame.empty:
    state.empty_catalog_help()
    st.stop()

search_col, dataset_col, arch_col = st.columns([2, 1, 1.4])
search = search_col.text_input("Search names", key="search", placeholder="e.g. lenet5*  or  *lam20",
                               help="Wildcards `*` `?` `[..]`; plain text matches anywhere in the name.")
datasets = dataset_col.multiselect("Dataset", sorted(frame["dataset"].unique()), key="datasets")
archs = arch_col.multiselect("Architecture", sorted(frame["arch"].unique()), key="archs")
with st.expander("Accuracy, size and sparsity filters"):
    acc_col, size_col, slices_col, weights_col = st.columns(4)
    min_top1 = acc_col.slider("Min top-1 (%)", 0.0, 100.0, step=0.5, key="min_top1")
    max_kb = float(frame["size_kb"].max())
    max_size = size_col.number_input("Max file size (KB)", min_value=0.0, step=1.0, key="max_kb",
                                     placeholder=f"any (largest: {max_kb:,.1f} KB)")
    min_slices = slices_col.slider("Min conv slice sparsity (%)", 0.0, 100.0, step=0.5, key="min_sparsity",
                                   help="zero K×K slices of the K×K convolutions; above 0, models without "
                                        "such convolutions are hidden")
    min_weights = weights_col.slider("Min weight sparsity (%)", 0.0, 100.0, step=0.5, key="min_weight_sparsity",
                                     help="zero weights of the compressed layers")

shown = data.filter_frame(frame, search=search, datasets=datasets, archs=archs, min_top1_pct=min_top1,
                          max_size_kb=max_size, min_slice_sparsity_pct=min_slices,
                          min_weight_sparsity_pct=min_weights)
st.markdown(f"**{len(shown):,}** of {len(frame):,} entries · select a row to open its model card")

config = {  # the name, then the figures (what a phone shows first), then where the model comes from
    "name": st.column_config.TextColumn(data.COLUMNS["name"], width=250, pinned=True),  # the longest name whole
    "top1_pct": st.column_config.NumberColumn(data.COLUMNS["top1_pct"], format="%.2f %%"),
    "accuracy_source": st.column_config.TextColumn(data.COLUMNS["accuracy_source"], width="small",
                                                   help="measured on this installation, or claimed by the file"),
    "size_kb": st.column_config.NumberColumn(data.COLUMNS["size_kb"], format="%.2f KB"),
    "compression": st.column_config.NumberColumn(data.COLUMNS["compression"], format="%.0f×",
                                                 help="fp32 checkpoint bytes ÷ file bytes"),
    "conv_slice_sparsity_pct": st.column_config.NumberColumn(
        data.COLUMNS["conv_slice_sparsity_pct"], format="%.1f %%",
        help=f"zero K×K slices of the convolutions with K×K kernels (K > 1); {data.MISSING} without such "
             "convolutions"),
    "weight_sparsity_pct": st.column_config.NumberColumn(data.COLUMNS["weight_sparsity_pct"], format="%.1f %%",
                                                         help="zero weights of the compressed layers"),
    "macs_saved_pct": st.column_config.NumberColumn(data.COLUMNS["macs_saved_pct"], format="%.1f %%",
                                                    help="multiply-accumulates skipped with zero slices"),
    "arch": st.column_config.TextColumn(data.COLUMNS["arch"]),
    "dataset": st.column_config.TextColumn(data.COLUMNS["dataset"], width=110),  # "fashion-mnist" whole
    "plugin": data.COLUMNS["plugin"],
    "added": st.column_config.DatetimeColumn(data.COLUMNS["added"], format="YYYY-MM-DD"),
}
# missing figures (no K×K convs, no accuracy) read "—" as in the CLI; the columns stay numbers, so they sort
# as numbers (a pandas Styler's "—" would cost ~0.4 s a paint)
selection = st.dataframe(shown, column_config=config, column_order=list(config), hide_index=True,
                         placeholder=data.MISSING, on_select="rerun", selection_mode="single-row",
                         key=f"table-{st.session_state.get('opened', 0)}",
                         height=min(38 + 35 * max(len(shown), 1), 640))

if shown.empty:
    st.info("No entry matches these filters: widen them or clear the search.", icon=":material/filter_alt_off:")
rows = selection.selection.rows if selection else []
if rows:
    st.session_state["opened"] = st.session_state.get("opened", 0) + 1  # a fresh table when we come back
    st.switch_page("app_pages/model.py", query_params={"model": shown.iloc[rows[0]]["name"]})
