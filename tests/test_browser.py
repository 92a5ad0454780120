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
DEPTHWISE = "timm/mobilenetv2_050.mnist-lam1"

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

        page.get_by_test_id("stTopNav").get_by_role("link", name="Compare").click()
        testing.wait_until_idle(page)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text(re.compile(r"\(published,")).first).to_be_attached()  # legend lines wrap
        page.screenshot(path=shots / "compare.png")

        page.goto(f"{url}/model?model={NAME}")
        testing.wait_until_idle(page)
        expect(page.get_by_role("heading", name=NAME)).to_be_visible()
        expect(page.locator(".js-plotly-plot")).to_have_count(4, timeout=30_000)  # 2 layer charts, slices, parts
        with page.expect_download() as download_info:
            page.get_by_role("button", name=re.compile(r"Download \.lnx")).click()
        saved = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(saved)
        pulled = zoo.pull(NAME)
        assert saved.name == f"{NAME}.lnx"
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(pulled.read_bytes()).hexdigest()
        expect(page.get_by_text(hashlib.sha256(pulled.read_bytes()).hexdigest())).to_be_visible()
        page.screenshot(path=shots / "model.png")

        page.goto(f"{url}/model?model={DEPTHWISE}")  # a name with a "/": the download keeps the snippet's name
        testing.wait_until_idle(page)
        with page.expect_download() as download_info:
            page.get_by_role("button", name=re.compile(r"Download \.lnx")).click()
        expect(page.get_by_text(f"-o {download_info.value.suggested_filename}")).to_be_visible()

        page.get_by_test_id("stTopNav").get_by_role("link", name="Benchmark").click()
        testing.wait_until_idle(page)
        page.get_by_role("button", name="Run benchmark").click()
        expect(page.get_by_text(re.compile(r"result rows stored in the catalog"))).to_be_visible(timeout=180_000)
        testing.wait_until_idle(page)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("What the sparse variant ran")).to_be_visible()
        expect(page.get_by_text("Cancel")).to_have_count(0)
        page.set_viewport_size({"width": 1440, "height": 1500})  # the page scrolls inside: show the chart
        page.screenshot(path=shots / "benchmark.png")
        page.set_viewport_size(testing.WIDE)

        page.get_by_test_id("stTopNav").get_by_role("link", name="Upload").click()
        testing.wait_until_idle(page)
        broken = bytearray((SHIPPED / f"{NAME}.lnx").read_bytes())
        broken[300] ^= 0x01
        page.locator('input[type="file"]').set_input_files(
            files=[{"name": "broken.lnx", "mimeType": "application/octet-stream", "buffer": bytes(broken)}])
        expect(page.get_by_text("broken.lnx was not added.")).to_be_visible(timeout=30_000)
        assert len(zoo.list()) == total  # refused: the catalog is unchanged
        page.screenshot(path=shots / "upload-refused.png")

        browser.close()
    assert not [line for line in (Path(dashboard[2]) / "home" / "dashboard.log").read_text().splitlines()
                if "Traceback" in line]


# every page, on a wide screen and a phone: (file name, path, what must be visible, plotly charts at least)
PAGES = [("browse", "", "LilNetX Zoo", 0), ("compare", "/compare", "Side by side", 4),
         ("model", f"/model?model={NAME}", NAME, 4), ("model-depthwise", f"/model?model={DEPTHWISE}", DEPTHWISE, 4),
         ("benchmark", "/benchmark", "Benchmark", 0), ("plugins", "/plugins", "Plugins", 0),
         ("upload", "/upload", "Upload", 0)]

_OVERLAPS = """() => {
  const boxes = [...document.querySelectorAll('.js-plotly-plot')].map(e => e.getBoundingClientRect())
    .filter(r => r.width > 0 && r.height > 0);
  const found = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach(b => {
    const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
    const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (w > 1 && h > 1) found.push([i, w, h]);
  }));
  const wide = boxes.filter(r => r.right > window.innerWidth + 1).length;
  return {found, wide, count: boxes.length};
}"""


def test_every_page_lays_out_without_overlap_and_logs_no_warning(dashboard: tuple[str, Zoo, Path]) -> None:
    """Each page at 1440x900 and 390x844: its charts neither overlap nor run off the screen; the server
    log holds no warning. Screenshots of every page go to ``$LILNETX_SCREENSHOT_DIR`` when set."""
    from playwright.sync_api import expect, sync_playwright

    url, _, root = dashboard
    shots = Path(os.environ["LILNETX_SCREENSHOT_DIR"]) if os.environ.get("LILNETX_SCREENSHOT_DIR") else None
    log = Path(root) / "home" / "dashboard.log"
    start = len(log.read_text().splitlines())
    with sync_playwright() as p:
        browser = testing.launch_chromium(p)
        for size, viewport in (("", testing.WIDE), ("-phone", testing.PHONE)):
            page = browser.new_context(viewport=viewport).new_page()
            for shot, path, text, charts in PAGES:
                page.goto(f"{url}{path}")
                testing.wait_until_idle(page)
                expect(page.get_by_text(text).first).to_be_visible(timeout=30_000)
                if charts:
                    expect(page.locator(".js-plotly-plot").nth(charts - 1)).to_be_attached(timeout=30_000)
                testing.wait_until_idle(page)
                page.wait_for_function("() => !document.querySelector('[data-testid^=\"stSkeleton\"]')",
                                       timeout=30_000)
                page.wait_for_timeout(500)  # plotly lays out after the script run
                layout = page.evaluate(_OVERLAPS)
                assert layout["found"] == [] and layout["wide"] == 0, (shot + size, layout)
                if shots is not None:  # the page scrolls inside: a viewport as tall as the page shows it all
                    tall = page.evaluate("() => Math.max(...[...document.querySelectorAll('section, div')]"
                                         ".map(e => e.scrollHeight))")
                    page.set_viewport_size({"width": viewport["width"], "height": min(int(tall) + 40, 8000)})
                    page.wait_for_function("() => !document.querySelector('[data-testid^=\"stSkeleton\"]')",
                                           timeout=30_000)  # lazily loaded widgets and grids have drawn
                    page.wait_for_timeout(800)
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=shots / f"{shot}{size}.png")
                    page.set_viewport_size(viewport)
        browser.close()
    new_lines = log.read_text().splitlines()[start:]
    assert not [line for line in new_lines if "WARNING" in line or "Traceback" in line], new_lines
