"""``lilnetx dashboard``: start the Streamlit dashboard on the catalog and print its URL.

An empty catalog that was never seeded first gets the shipped models (``zoo.seed.seed_on_first_use``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def streamlit_command(host: str, port: int, app: Path = APP) -> list[str]:
    """The ``streamlit run`` command line for the dashboard (or another ``app``): headless, on ``host:port``,
    no telemetry, no error details (tracebacks) in the browser."""
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless=true",
            f"--server.address={host}", f"--server.port={port}", "--browser.gatherUsageStats=false",
            "--client.showErrorDetails=none", "--client.toolbarMode=minimal", "--server.fileWatcherType=none",
            "--theme.base=light"]


def run_dashboard(args: argparse.Namespace) -> int:
    """Replace this process with the Streamlit server (it never returns on success)."""
    if not APP.is_file():
        raise FileNotFoundError(f"the dashboard is missing ({APP}); reinstall lilnetx-zoo from its repository")
    if args.db:
        os.environ["LILNETX_DB"] = args.db
    from zoo.seed import seed_on_first_use
    from zoo.service import Zoo

    seed_on_first_use(Zoo.from_env())  # like every `lilnetx zoo` command: an empty, new catalog gets the shipped models
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"LilNetX Zoo dashboard: http://{shown}:{args.port}  (Ctrl+C stops it)", flush=True)
    command = streamlit_command(args.host, args.port)
    os.execve(command[0], command, os.environ)  # this process becomes the server: signals reach it directly


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dashboard", help="browse, compare, download and benchmark the zoo in a browser",
                                   description="Start the web dashboard on the catalog (LILNETX_DB).")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--db", help="catalog URL, e.g. sqlite:///registry.db (default: LILNETX_DB or "
                                     "registry.db in the working folder)")
    parser.set_defaults(func=run_dashboard)
