"""Upload: add a .lnx file from the browser, verified completely before it reaches the catalog."""

from typing import Any

import streamlit as st

from dashboard import access, state, upload

st.title("Upload a model")
st.caption(f"Add a `.lnx` file written by `lilnetx export` or `lilnetx.save` (at most "
           f"{upload.MAX_UPLOAD_BYTES / 1e6:.0f} MB). It is checked — size, format and sha256, header, "
           "architecture plugin installed, decodes into a model — before anything is stored; a file that fails "
           "changes nothing.")
mode = access.current_mode()
st.info(access.describe_mode(mode), icon=":material/lock:" if mode != "open" else ":material/lock_open:")
if mode == "off":
    st.stop()
token = st.text_input("Token", type="password", key="upload_token") if mode == "token" else None

if added := st.session_state.pop("upload_added", None):  # set before the rerun that refreshed the entry count
    st.success(f"Added **{added}** to the catalog.", icon=":material/check_circle:")
    st.page_link("app_pages/model.py", label=f"Open {added}", icon=":material/arrow_forward:",
                 query_params={"model": added})


@st.cache_data(show_spinner="Checking the file…", max_entries=16)
def check(sha256: str, filename: str, _blob: bytes) -> tuple[Any, str | None]:
    """Each file (by sha256) is checked once: (the checked upload, None) or (None, why it was refused)."""
    try:
        return upload.check_upload(_blob, filename=filename), None
    except upload.UploadError as exc:
        return None, str(exc)


file = st.file_uploader("Artifact (.lnx)", type=["lnx"], key="upload_file",
                        max_upload_size=max(1, upload.MAX_UPLOAD_BYTES // 1_000_000))
if file is None:
    st.stop()

blob = file.getvalue()
sha256 = upload.sha256_of(blob)
if names := upload.names_in_zoo(state.zoo(), sha256):
    st.info(f"**{file.name}** is already in the zoo as **{names[0]}**.", icon=":material/inventory_2:")
    st.page_link("app_pages/model.py", label=f"Open {names[0]}", icon=":material/arrow_forward:",
                 query_params={"model": names[0]})
    st.stop()
checked, error = check(sha256, file.name, blob)
if error is not None:
    st.error(f"**{file.name} was not added.** {error}", icon=":material/block:")
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
                added = upload.add_upload(state.zoo(), blob, tag, token=token)
        except upload.UploadError as exc:
            st.error(f"**Not added.** {exc}", icon=":material/block:")
            st.stop()
        state.refresh()
        st.session_state["upload_added"] = added
        st.rerun()  # the entry count at the top of the page is drawn before the page: draw it again
