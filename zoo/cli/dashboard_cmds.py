"""``lilnetx dashboard``: start the Streamlit dashboard on the catalog and print its URL.

An empty catalog that was never seeded first gets the shipped models (``zoo.seed.seed_on_first_use``). On
an address other than loopback, uploads need ``--token`` (or ``LILNETX_DASHBOARD_TOKEN``) or are off
(``--read-only``, or no token): see ``dashboard.access``.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
MODE_ENV = "LILNETX_DASHBOARD_WRITES"  # what the server lets visitors change: open, token or off
TOKEN_ENV = "LILNETX_DASHBOARD_TOKEN"
MODE_NOTES = {"open": "uploads are open (this address is reachable from this machine only)",
              "token": "uploads need the token",
              "off": "read-only: no uploads (give --token or LILNETX_DASHBOARD_TOKEN to allow them)"}


def is_loopback(host: str) -> bool:
    """``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_mode(host: str, token: str | None, read_only: bool) -> str:
    """``off`` when read-only, ``token`` when a token is set, ``open`` on loopback, else ``off``."""
    if read_only:
        return "off"
    if token:
        return "token"
    return "open" if is_loopback(host) else "off"


def streamlit_command(host: str, port: int, app: Path = APP) -> list[str]:
    """The ``streamlit run`` command line for the dashboard (or another ``app``): headless, on ``host:port``,
    no telemetry, no error details (tracebacks) in the browser."""
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless=true",
            f"--server.address={host}", f"--server.port={port}", "--browser.gatherUsageStats=false",
            "--client.showErrorDetails=none", "--client.toolbarMode=minimal", "--server.fileWatcherType=none",
            "--theme.base=light"]


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: give 1-65535, e.g. --port 8501")
    return port


def check_can_serve(host: str, port: int) -> None:
    """Raise ``CLIError`` unless ``host:port`` can be bound now (in use, unknown host, no permission)."""
    from zoo.cli import CLIError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fix = "stop what uses that port, or choose another with --port N"
        elif exc.errno == errno.EACCES:
            fix = "choose a port this user may open with --port N (1024 or above)"
        else:
            fix = "give an address of this machine with --host (127.0.0.1, or 0.0.0.0 for every interface)"
        raise CLIError(f"cannot serve the dashboard on {host}:{port} ({exc.strerror or exc}): {fix}") from None


def run_dashboard(args: argparse.Namespace) -> int:
    """Replace this process with the Streamlit server (it never returns on success)."""
    if not APP.is_file():
        raise FileNotFoundError(f"the dashboard is missing ({APP}); reinstall lilnetx-zoo from its repository")
    check_can_serve(args.host, args.port)
    if args.db:
        os.environ["LILNETX_DB"] = args.db
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token:
        os.environ[TOKEN_ENV] = token
    mode = os.environ[MODE_ENV] = write_mode(args.host, token, args.read_only)
    from zoo.seed import seed_on_first_use
    from zoo.service import Zoo

    seed_on_first_use(Zoo.from_env())  # like every `lilnetx zoo` command: an empty, new catalog gets the shipped models
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"LilNetX Zoo dashboard: http://{shown}:{args.port}  (Ctrl+C stops it)", flush=True)
    print(f"Dashboard: {MODE_NOTES[mode]}", flush=True)
    command = streamlit_command(args.host, args.port)
    os.execve(command[0], command, os.environ)  # this process becomes the server: signals reach it directly


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dashboard", help="browse, compare, download and benchmark the zoo in a browser",
                                   description="Start the web dashboard on the catalog (LILNETX_DB).")
    parser.add_argument("--port", type=port_number, default=8501, help="port to serve on (default 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--db", help="catalog URL, e.g. sqlite:///registry.db (default: LILNETX_DB or "
                                     "registry.db in the working folder)")
    parser.add_argument("--token", help="uploads need this token (default: LILNETX_DASHBOARD_TOKEN); without one, "
                                        "a dashboard on a non-loopback address is read-only")
    parser.add_argument("--read-only", action="store_true", help="no uploads, whatever the address")
    parser.set_defaults(func=run_dashboard)
