"""Model: one entry's card, per-layer charts, zero-slice maps, file parts, recipe, download and how to load."""

import hashlib

import streamlit as st
import yaml

from dashboard import charts, data, state
from zoo.formatting import percent

frame = state.table()
if frame.empty:
    st.title("Model")
    state.empty_catalog_help()
    st.stop()

names = frame["name"].tolist()
wanted = st.query_params.get("model")
name = st.selectbox("Zoo entry", names, index=names.index(wanted) if wanted in names else 0, key="model_name")
st.query_params["model"] = name
if wanted and wanted not in names:
    st.warning(f"No zoo entry named `{wanted}`; showing `{name}` instead.")

card = state.card(name)
acc = data.accuracy_of(card)
st.title(name)
st.caption(f"{card['architecture']} · {card['dataset']} ({card['num_classes']} classes) · "
           f"input {card['input']['size']} · format v{card['format_version']}")

m = st.columns(3) + st.columns(3)
m[0].metric(f"Top-1 ({acc.source})", percent(acc.top1),
            help="measured on this installation" if acc.measured else
            "claimed by the file's header; not measured on this installation")
m[1].metric("File size", f"{card['size']['bytes'] / data.KB:,.2f} KB", help=f"{card['size']['bytes']:,} bytes")
m[2].metric("vs fp32", f"{card['size']['compression_ratio']:,.0f}×",
            help=f"fp32 checkpoint: {card['size']['fp32_bytes']:,} bytes")
conv_slices = card["sparsity"]["conv_slice"]
m[3].metric("Conv slice sparsity", percent(conv_slices, 1, missing=data.NO_CONVS),
            help="share of the K×K kernel slices (K > 1) of the convolutions that are zero"
            if conv_slices is not None else "this model has no convolutions with K×K kernels (K > 1)")
m[4].metric("Weight sparsity", percent(card["sparsity"]["weight"], 1),
            help="share of the compressed layers' weights that are zero")
macs = card["macs"]
if macs.get("saved") is not None:
    m[5].metric("MACs saved", percent(macs["saved"], 1),
                help=f"multiply-accumulates per image skipped with zero slices: {macs['sparse']:,} of "
                     f"{macs['dense']:,} are left")
measured_on = card.get("measured_on") or {}
if acc.measured and measured_on:
    st.caption(f":material/verified: Accuracy measured on this installation: {measured_on.get('dataset')}, "
               f"{measured_on.get('images') or 0:,} test images, {str(measured_on.get('measured_at', ''))[:16].replace('T', ' ')} UTC.")
    claimed = (card.get("claimed_accuracy") or {}).get("top1")
    if claimed is not None and abs(claimed - acc.top1) >= 5e-5:
        st.caption(f"The file claims {percent(claimed)}.")
elif not acc.measured:
    st.caption(":material/info: Accuracy is the figure the file claims; it was not measured on this installation.")

# -- download and load ---------------------------------------------------------------------------------
with st.container(border=True):
    left, right = st.columns([1, 2])
    with left:
        st.subheader("Download")
        with state.friendly_errors("fetch the artifact"):
            blob = state.artifact_bytes(name, card["sha256"])
            digest = hashlib.sha256(blob).hexdigest()
            if digest != card["sha256"]:
                st.error("The stored file does not match the catalog's sha256: run `lilnetx zoo reindex`.")
            else:
                st.download_button(f"Download .lnx ({len(blob):,} bytes)", blob, file_name=data.download_name(name),
                                   mime="application/octet-stream", on_click="ignore", type="primary",
                                   icon=":material/download:", key="download")
                st.caption("sha256")
                st.code(digest, language=None, wrap_lines=True)
    with right:
        st.subheader("Load it")
        st.code(card["how_to_load"]["python"], language="python", wrap_lines=True)
        file_name = data.download_name(name)  # the same name as the download's
        st.code(f"lilnetx zoo pull {name} -o {file_name}\nlilnetx inspect {file_name}", language="bash",
                wrap_lines=True)

# -- layers -----------------------------------------------------------------------------------------------
st.header("Layers")
layers = data.layer_frame(card)
if layers.empty:
    st.info("The catalog holds no per-layer figures for this model.")
else:
    size_col, sparsity_col = st.columns(2)  # side by side on a wide screen, stacked on a phone
    size_col.plotly_chart(charts.layer_size_bars(layers), key="layer_size")
    sparsity_col.plotly_chart(charts.layer_sparsity_bars(layers), key="layer_sparsity")
    with st.expander("Per-layer table"):
        st.dataframe(layers.rename(columns=data.LAYER_COLUMNS), hide_index=True, placeholder=data.MISSING,
                     column_config={data.LAYER_COLUMNS[c]: st.column_config.NumberColumn(format="%.2f")
                                    for c in ("coded_bytes", "estimated_bytes", "conv_slice_sparsity_pct",
                                              "weight_sparsity_pct")})

st.subheader("Zero K×K slices per conv layer")
with state.friendly_errors("decode the model for its slice maps"):
    maps = state.slice_maps(name, card["sha256"])
    if not maps:
        st.info("This model has no convolutions with K×K kernels (K > 1): there are no slices to map.")
    else:
        biggest = max(range(len(maps)), key=lambda i: list(maps.values())[i].size)
        layer = st.selectbox("Conv layer", list(maps), index=biggest, key="slice_layer")
        st.plotly_chart(charts.slice_heatmap(maps[layer], layer), key="slice_heatmap")

# -- the file -----------------------------------------------------------------------------------------------
st.header("Inside the file")
parts = data.parts_frame(card)
st.plotly_chart(charts.parts_bar(parts), key="parts_bar")
size = card["size"]
if size.get("estimated_bits") is not None and size.get("coded_latent_bytes") is not None:
    st.caption(f"Coded latents: {size['coded_latent_bytes']:,} bytes; the learned density estimated "
               f"{size['estimated_bits'] / 8:,.0f} bytes.")
with st.expander("Per-tensor coding (from the file's header)"), state.friendly_errors("read the file's header"):
    st.dataframe(data.header_tensor_frame(state.header(name, card["sha256"])), hide_index=True, key="header_table",
                 placeholder=data.MISSING,
                 column_config={
                     "tensor": "Tensor", "group": "Latent group", "shape": "Shape", "symbols": "Symbol range",
                     "estimated_bytes": st.column_config.NumberColumn("Estimated (bytes)", format="%.1f"),
                     "ideal_bytes": st.column_config.NumberColumn("Ideal under the tables (bytes)", format="%.1f"),
                     "coded_bytes": st.column_config.NumberColumn("Coded (bytes)", format="%.1f"),
                     "zeros": st.column_config.NumberColumn("Zero latents"),
                     "zero_slices": st.column_config.NumberColumn("Zero slices")})

st.header("Training")
history = data.training_history(card)
if history.empty:
    st.info("No training curves were recorded in this model's file (it holds the recipe and the final "
            "metrics).", icon=":material/show_chart:")
else:
    st.plotly_chart(charts.history_lines(history), key="history")
recipe_col, versions_col = st.columns([2, 1])
with recipe_col:
    st.subheader("Recipe")
    if card["recipe"]:
        st.code(yaml.safe_dump(card["recipe"], sort_keys=False, default_flow_style=None, width=100),
                language="yaml", wrap_lines=True)
    else:
        st.caption("No recipe was recorded in the file.")
with versions_col:
    st.subheader("Versions")
    st.json(card["versions"], expanded=True)
