"""Who may change the zoo from the dashboard: anyone on a loopback-only server, the holder of the token on a
server others can reach, nobody on a read-only one.

``lilnetx dashboard`` decides (``zoo.cli.dashboard_cmds.write_mode``) and passes the answer to the Streamlit server in
``LILNETX_DASHBOARD_WRITES``; the token travels in ``LILNETX_DASHBOARD_TOKEN`` (or ``--token``).
"""

from __future__ import annotations

import hmac
import os

from zoo.cli.dashboard_cmds import MODE_ENV, TOKEN_ENV

MODES = ("open", "token", "off")


def current_mode() -> str:
    """This server's mode (``streamlit run`` without the CLI: ``token`` when a token is set, else ``open``;
    ``token`` without a token is ``off``)."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode not in MODES:
        mode = "token" if os.environ.get(TOKEN_ENV) else "open"
    return "off" if mode == "token" and not os.environ.get(TOKEN_ENV) else mode


def may_write(given_token: str | None) -> bool:
    """Whether a visitor who typed ``given_token`` (or nothing) may change the zoo."""
    mode = current_mode()
    if mode == "open":
        return True
    expected = os.environ.get(TOKEN_ENV, "")
    return mode == "token" and bool(expected) and hmac.compare_digest((given_token or "").encode(), expected.encode())


def describe_mode(mode: str) -> str:
    """One sentence for the page: what this server lets visitors change."""
    return {"open": "Uploads are open: this dashboard listens on this machine only.",
            "token": "Uploads need this dashboard's token (`--token` / `LILNETX_DASHBOARD_TOKEN` where it was started).",
            "off": "Uploads are off: this dashboard is read-only (started with `--read-only`, or on a network "
                   "address without `--token`)."}[mode]
