"""Upload: add a .lnx file from the browser, verified completely before it reaches the catalog."""

import streamlit as st

from dashboard import state, upload

st.title("Upload a model")
st.caption(f"Add a `.lnx` file written by `lilnetx export` or `lilnetx.save` (at most "
           f"{upload.MAX_UPLOAD_BYTES / 1e6:.0f} MB). It is checked — size, format and sha256, header, "
           "architecture plugin installed, decodes into a model — before anything is stored; a file that fails "
           "changes nothing.")

file = st.file_uploader("Artifact (.lnx)", type=["lnx"], key="upload_file",
                        max_upload_size=max(1, upload.MAX_UPLOAD_BYTES // 1_000_000))
if file is None:
    st.stop()

blob = file.getvalue()
try:
    checked = upload.check_upload(blob, filename=file.name)
except upload.UploadError as exc:
    st.error(f"**{file.name} was not added.** {exc}", icon=":material/block:")
    st.stop()

st.success(f"**{file.name}** is a valid artifact: `{checked.arch}` on {checked.dataset or 'an unnamed dataset'}, "
           f"{checked.size_bytes:,} bytes, {checked.params:,} parameters.", icon=":material/verified:")
st.code(f"sha256 {checked.sha256}", language=None, wrap_lines=True)
tag = st.text_input("Tag (the entry is named ARCH.TAG; the tag starts with the dataset)",
                    value=upload.suggested_tag(checked), key="upload_tag")
try:
    name = upload.entry_name(checked, tag)
except upload.UploadError as exc:
    st.error(str(exc))
    st.stop()

if st.button(f"Add as {name}", type="primary", icon=":material/add:", key="upload_add"):
    with state.friendly_errors(f"add {name}"):
        try:
            with st.spinner("Verifying, measuring its accuracy where the dataset is at hand, and adding…"):
                added = upload.add_upload(state.zoo(), blob, tag)
        except upload.UploadError as exc:
            st.error(f"**Not added.** {exc}", icon=":material/block:")
            st.stop()
        state.refresh()
        st.success(f"Added **{added}** to the catalog.", icon=":material/check_circle:")
        st.page_link("app_pages/model.py", label=f"Open {added}", icon=":material/arrow_forward:",
                     query_params={"model": added})
