"""Plugins: what is installed, which architectures and datasets each contributes, and how to add one."""

import streamlit as st

from dashboard import plugins_info, state

st.title("Plugins")
st.caption("Architectures and datasets come from pluggy plugins: the built-in ones and any installed package "
           "that declares a `lilnetx.plugins` entry point.")

with state.friendly_errors("list the plugins"):
    plugins, archs = plugins_info.plugin_frames()
    st.subheader(f"Installed plugins ({len(plugins)})")
    st.dataframe(plugins, hide_index=True, key="plugins_table")
    st.subheader(f"Architectures ({len(archs)})")
    st.caption("Besides these, `timm/<any timm model>` is built on demand by the timm plugin.")
    st.dataframe(archs, hide_index=True, key="archs_table")

st.header("Add your own")
st.markdown("A plugin is an ordinary Python package. Register its module under the `lilnetx.plugins` "
            "entry point in its `pyproject.toml`, implement a hook, `pip install` it, and restart the dashboard:")
st.code(plugins_info.EXAMPLE_PYPROJECT, language="toml")
st.code(plugins_info.EXAMPLE_PLUGIN, language="python")
st.markdown("Hooks: " + ", ".join(f"`{h}`" for h in plugins_info.hooks()) + ". See the README's "
            "*Write a plugin* section for what each does.")
