"""The LilNetX Zoo dashboard: ``lilnetx dashboard`` (or ``streamlit run dashboard/app.py``).

The router: page set-up and ``st.navigation`` over
``dashboard/app_pages/`` (pages along the top, the catalog's URL and entry count
under them). Each page is a thin script over ``dashboard.data`` / ``charts`` / ``upload`` /
``benchmark_worker``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts dashboard/ first, not the repository
    sys.path.insert(0, str(ROOT))

from dashboard import state  # noqa: E402

st.set_page_config(page_title="LilNetX Zoo", page_icon=":material/compress:", layout="wide",
                   menu_items={"About": "LilNetX Zoo: tiny, entropy-coded, slice-sparse networks "
                                        "(https://arxiv.org/abs/2204.02965)."})

PAGES = [
    st.Page("app_pages/browse.py", title="Browse", icon=":material/table_view:", default=True),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/scatter_plot:"),
    st.Page("app_pages/model.py", title="Model", icon=":material/memory:"),
    st.Page("app_pages/benchmark.py", title="Benchmark", icon=":material/speed:"),
    st.Page("app_pages/plugins.py", title="Plugins", icon=":material/extension:"),
    st.Page("app_pages/upload.py", title="Upload", icon=":material/upload_file:"),
]
page = st.navigation(PAGES, position="top")
BROWSE_FILTERS = {"search": "", "datasets": [], "archs": [], "min_top1": 0.0, "max_kb": None, "min_sparsity": 0.0,
                  "min_weight_sparsity": 0.0}
# Browse's filters: defaults set here once, and kept across visits to other pages (widgets take their value
# from the session state, so the pages pass none: a default beside a session value is a Streamlit warning)
for key, default in BROWSE_FILTERS.items():
    st.session_state[key] = st.session_state.get(key, default)
st.html("<style>@media (max-width: 640px) { h1 { font-size: 1.75rem !important; } }</style>")  # long names on phones

with state.friendly_errors("open the catalog"):
    from dashboard.catalog import catalog_url

    st.caption(f":material/database: Catalog `{catalog_url(state.zoo().engine)}` · "
               f"**{len(state.table()):,}** entries")

with state.friendly_errors(f"show the {page.title} page"):
    page.run()
