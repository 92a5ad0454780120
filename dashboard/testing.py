"""Drive the real dashboard in a browser: start ``lilnetx dashboard`` on a catalog, launch Debian's chromium.

Used by ``tests/test_browser.py`` and ``benchmarks/dashboard_load.py``. Chromium is the system package
(``apt-get install chromium``; ``make system-deps`` does it), driven by Playwright — never downloaded.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDE, PHONE = {"width": 1440, "height": 900}, {"width": 390, "height": 844}


def missing_browser() -> str | None:
    """Why a browser test cannot run here, or ``None`` when it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: install Debian's chromium (`apt-get install chromium`, or `make system-deps`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: `pip install -e '.[test]'`"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_dashboard(db_url: str, home: Path, *, timeout_s: float = 90.0,
                      env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``lilnetx dashboard`` on ``db_url`` (store under ``home``); yield its URL; stop it afterwards."""
    port = free_port()
    lilnetx = shutil.which("lilnetx", path=str(Path(sys.executable).parent)) or "lilnetx"
    process_env = {**os.environ, "LILNETX_HOME": str(home), "LILNETX_MEASURE_TIMEOUT": "0", **(env or {})}
    process_env.pop("LILNETX_ZOO_URL", None)
    log = home / "dashboard.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen([lilnetx, "dashboard", "--port", str(port), "--db", db_url], env=process_env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start (exit code {process.poll()}):\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_chromium(playwright: Any) -> Any:
    """Debian's chromium, headless, with nothing that reaches the network on its own."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def wait_until_idle(page: Any, timeout_ms: float = 60_000) -> None:
    """Wait until the app has rendered a title and no script run is in progress."""
    page.wait_for_selector("h1", timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
