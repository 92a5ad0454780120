"""The dashboard's cached reads and its error display (the only module besides the pages that uses Streamlit).

The zoo (catalog engine, store) is a ``st.cache_resource`` per catalog URL; frames, cards, artifact bytes
and decoded slice maps are ``st.cache_data`` keyed by the catalog's fingerprint or the artifact's sha256,
so they are rebuilt exactly when the catalog changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import catalog, data
from zoo.catalog.engine import database_url
from zoo.service import Zoo

log = logging.getLogger("lilnetx.dashboard")


@st.cache_resource(show_spinner=False)
def _zoo(db_url: str, home: str, remote: str) -> Zoo:
    return Zoo.from_env()


def zoo() -> Zoo:
    """The zoo of this process's environment (``LILNETX_DB``, ``LILNETX_HOME``, ``LILNETX_ZOO_URL``)."""
    return _zoo(database_url(), os.environ.get("LILNETX_HOME", ""), os.environ.get("LILNETX_ZOO_URL", ""))


def fingerprint() -> tuple[Any, ...]:
    return catalog.fingerprint(zoo().engine)


@st.cache_data(show_spinner=False, max_entries=8)
def _table(db_url: str, key: tuple[Any, ...]) -> pd.DataFrame:
    return data.catalog_frame(catalog.entry_rows(zoo().engine), catalog.plugin_of)


def table() -> pd.DataFrame:
    """Every entry as a frame (see ``dashboard.data.catalog_frame``), cached until the catalog changes."""
    return _table(database_url(), fingerprint())


@st.cache_data(show_spinner=False, max_entries=256)
def _card(db_url: str, name: str, key: tuple[Any, ...]) -> dict[str, Any]:
    return zoo().card(name)


def card(name: str) -> dict[str, Any]:
    """The model card of ``name``."""
    return _card(database_url(), name, fingerprint())


@st.cache_data(show_spinner=False, max_entries=64)
def artifact_bytes(name: str, sha256: str) -> bytes:
    """The verified ``.lnx`` bytes of entry ``name`` (``Zoo.pull`` checks them against ``sha256``)."""
    return zoo().pull(name).read_bytes()


@st.cache_data(show_spinner=False, max_entries=64)
def header(name: str, sha256: str) -> dict[str, Any]:
    """The verified header of entry ``name``'s artifact, with the per-layer figures recomputed from its latents."""
    import lilnetx

    return lilnetx.read_artifact(zoo().pull(name)).header


@st.cache_data(show_spinner=False, max_entries=64)
def slice_maps(name: str, sha256: str) -> dict[str, np.ndarray]:
    """Zero-slice maps of every K×K conv of the decoded model of ``name``."""
    import lilnetx

    return data.zero_slice_maps(lilnetx.load(zoo().pull(name)))


def refresh() -> None:
    """Forget cached frames and cards (after this session changed the catalog)."""
    _table.clear()
    _card.clear()


@contextmanager
def friendly_errors(what: str) -> Iterator[None]:
    """Show an exception as ``st.error`` naming ``what`` failed and the fix; the traceback goes to the log."""
    try:
        yield
    except Exception as exc:  # a page must never show a raw traceback
        log.exception("dashboard: %s failed", what)
        st.error(f"**Could not {what}.** {exc}", icon=":material/error:")


def empty_catalog_help() -> None:
    """What to show when the catalog has no entries: how to add a model."""
    st.info(
        "**The catalog is empty.** Add a model in one of these ways:\n\n"
        "- seed the models this repository ships: `lilnetx zoo seed` (or `make run`)\n"
        "- add a file you exported: `lilnetx zoo add model.lnx --tag mnist-mine`\n"
        "- upload a `.lnx` file on the **Upload** page\n"
        "- point `LILNETX_ZOO_URL` at a published zoo and restart the dashboard",
        icon=":material/inventory_2:",
    )
