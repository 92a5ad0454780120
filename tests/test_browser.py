"""End to end in a real browser: `lilnetx dashboard` on a temporary catalog, driven through Debian's chromium.

Filters the table, opens a model, downloads its file (sha256 checked against ``Zoo.pull``), runs a short live
benchmark, has a corrupt upload refused, and saves screenshots (to the test's tmp folder, or to
``$LILNETX_SCREENSHOT_DIR``). Skipped, saying why, only where chromium or Playwright is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from dashboard import testing
from zoo.catalog.engine import get_engine
from zoo.seed import seed
from zoo.service import Zoo
from zoo.store import Store

SHIPPED = Path(__file__).resolve().parents[1] / "zoo_artifacts"
NAME = "lenet5_caffe.mnist-lam20"

pytestmark = pytest.mark.skipif(testing.missing_browser() is not None, reason=str(testing.missing_browser()))


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Zoo, Path]:
    root = tmp_path_factory.mktemp("browser")
    db = f"sqlite:///{root / 'registry.db'}"
    zoo = Zoo(get_engine(db), Store(root / "home" / "store"), measure_timeout_s=0)
    assert len(seed(zoo, SHIPPED).names) == len(list(SHIPPED.glob("*.lnx")))
    with testing.running_dashboard(db, root / "home") as url:
        yield url, zoo, root


def test_filter_open_download_benchmark(dashboard: tuple[str, Zoo, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, zoo, _ = dashboard
    shots = Path(os.environ.get("LILNETX_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    total = len(zoo.list())
    with sync_playwright() as p:
        browser = testing.launch_chromium(p)
        page = browser.new_context(viewport=testing.WIDE, accept_downloads=True).new_page()

        page.goto(url)
        testing.wait_until_idle(page)
        expect(page.get_by_text(f"{total} of {total} entries")).to_be_visible()
        expect(page.get_by_text(re.compile(rf"Catalog .*registry\.db.* · {total} entries"))).to_be_visible()
        search = page.get_by_role("textbox", name="Search names")
        search.fill("lam20")
        search.press("Enter")
        expect(page.get_by_text(f"1 of {total} entries")).to_be_visible(timeout=20_000)
        page.screenshot(path=shots / "browse.png")

        page.get_by_role("link", name="Compare").click()
        testing.wait_until_idle(page)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("published, claimed").first).to_be_attached()
        page.screenshot(path=shots / "compare.png")

        page.goto(f"{url}/model?model={NAME}")
        testing.wait_until_idle(page)
        expect(page.get_by_role("heading", name=NAME)).to_be_visible()
        expect(page.locator(".js-plotly-plot")).to_have_count(3, timeout=30_000)  # layers, slices, parts
        with page.expect_download() as download_info:
            page.get_by_role("button", name=re.compile(r"Download \.lnx")).click()
        saved = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(saved)
        pulled = zoo.pull(NAME)
        assert saved.name == f"{NAME}.lnx"
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(pulled.read_bytes()).hexdigest()
        expect(page.get_by_text(hashlib.sha256(pulled.read_bytes()).hexdigest())).to_be_visible()
        page.screenshot(path=shots / "model.png")

        page.get_by_role("link", name="Benchmark").click()
        testing.wait_until_idle(page)
        page.get_by_role("button", name="Run benchmark").click()
        expect(page.get_by_text(re.compile(r"result rows stored in the catalog"))).to_be_visible(timeout=120_000)
        testing.wait_until_idle(page)
        expect(page.locator(".js-plotly-plot")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Cancel")).to_have_count(0)
        page.set_viewport_size({"width": 1440, "height": 1500})  # the page scrolls inside: show the chart
        page.screenshot(path=shots / "benchmark.png")
        page.set_viewport_size(testing.WIDE)

        page.get_by_role("link", name="Upload").click()
        testing.wait_until_idle(page)
        broken = bytearray((SHIPPED / f"{NAME}.lnx").read_bytes())
        broken[300] ^= 0x01
        page.locator('input[type="file"]').set_input_files(
            files=[{"name": "broken.lnx", "mimeType": "application/octet-stream", "buffer": bytes(broken)}])
        expect(page.get_by_text("broken.lnx was not added.")).to_be_visible(timeout=30_000)
        assert len(zoo.list()) == total  # refused: the catalog is unchanged
        page.screenshot(path=shots / "upload-refused.png")

        phone = browser.new_context(viewport=testing.PHONE).new_page()
        phone.goto(f"{url}/model?model={NAME}")
        testing.wait_until_idle(phone)
        expect(phone.get_by_role("heading", name=NAME)).to_be_visible()
        expect(phone.get_by_role("button", name=re.compile(r"Download \.lnx"))).to_be_visible(timeout=30_000)
        expect(phone.locator(".js-plotly-plot")).to_have_count(3, timeout=30_000)
        phone.screenshot(path=shots / "model-phone.png")
        browser.close()
    assert not [line for line in (Path(dashboard[2]) / "home" / "dashboard.log").read_text().splitlines()
                if "Traceback" in line]
