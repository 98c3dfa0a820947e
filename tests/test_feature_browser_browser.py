"""The feature browser in a real JupyterLab 4, in headless Chromium (the machinery of `tests/browser/lab.py`).

It opens `tests/browser/features.ipynb` (the browser on the embedded model and its shipped SAE, 8 held-out pictures
of 6 steps), runs it, picks another graded feature (the pictures and maps change), clicks a pixel of the strongest
picture's map (the features active there are listed), presses "switch feature ... off" (the before / after /
difference picture appears with the judge's verdict), then types a feature out of range (the SAE's one-line error).
The pictures must be shown at their natural size, blocky. A browser or server that cannot start fails the test with
one line; the screenshot's path is printed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

# JupyterLab, Chromium and a panel that generates: about a minute each, so `make test-all` runs them (CI runs both)
pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).parent / "browser"))

from lab import CLIPPED, HERE, SIZES, LabError, _src, _text, _wait_change, notebook_page  # noqa: E402

NOTEBOOK = HERE / "features.ipynb"
TILES = "img.sdviz-features-picture, img.sdviz-features-map"


def _tiles(page) -> list[str]:
    return [loc.get_attribute("src") or "" for loc in page.locator(TILES).all()]


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    work = tmp_path_factory.mktemp("features")
    out: dict = {"errors": []}
    t0 = time.monotonic()
    try:
        with notebook_page(NOTEBOOK, work, out["errors"]) as page:
            page.wait_for_selector("img.sdviz-features-map", timeout=60_000)
            page.wait_for_timeout(500)  # the last views render
            out["about"] = _text(page, ".sdviz-features-about")
            out["sizes"] = page.evaluate(SIZES, "img.sdviz-features-picture")
            out["first"] = _tiles(page)
            # another feature: the second of the graded ones
            page.locator(".sdviz-features-graded select").first.select_option(index=1)
            _wait_change(page, "img.sdviz-features-map", out["first"][1])
            page.wait_for_timeout(300)
            out["second"] = _tiles(page)
            out["second_about"] = _text(page, ".sdviz-features-about")
            # a pixel: the middle of the strongest picture's map
            box = page.locator("img.sdviz-features-map").first.bounding_box()
            page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
            page.wait_for_selector(".sdviz-features-ranking", timeout=20_000)
            out["ranking"] = _text(page, ".sdviz-features-pixel")
            # switch the feature off and regenerate
            compare = "img.sdviz-features-compare"
            empty = _src(page, compare)
            page.locator(".sdviz-features-off button, button.sdviz-features-off").first.click()
            out["compare"] = _wait_change(page, compare, empty, timeout=60)
            page.wait_for_function("() => (document.querySelector('.sdviz-features-verdict') || {}).innerText"
                                   "?.includes('after:')", timeout=60_000)  # fmt: skip
            out["verdict"] = _text(page, ".sdviz-features-verdict")
            out["clipped"] = page.evaluate(CLIPPED, ".sdviz-features button")
            out["shown"] = {k: page.evaluate(SIZES, f"img.sdviz-features-{k}") for k in ("compare", "chart", "map")}
            page.set_viewport_size({"width": 1400, "height": 2000})  # the whole panel in view for its screenshot
            page.wait_for_timeout(500)
            page.locator(".sdviz-features").first.screenshot(path=str(work / "features.png"))
            # a feature out of range: the SAE's error in the panel
            number = page.locator(".sdviz-features-number input").first
            number.fill("5000")
            number.press("Enter")
            out["status"] = _wait_change(page, ".sdviz-features-status", _text(page, ".sdviz-features-status"),
                                         attr="text")  # fmt: skip
    except LabError as e:
        pytest.fail(str(e), pytrace=False)
    print(f"\nscreenshot: {work / 'features.png'} ({time.monotonic() - t0:.0f} s)")
    return out


def test_the_panel_opens_on_a_graded_feature_shown_blocky_at_its_natural_size(seen):
    assert "AUROC" in seen["about"]
    sizes = seen["sizes"]
    assert sizes["natural_width"] == sizes["width"] == 128 and sizes["rendering"] == "pixelated"
    assert len(seen["first"]) == 8 and all(seen["first"])


def test_no_picture_is_resampled_by_the_browser(seen):
    for name, sizes in seen["shown"].items():
        assert sizes["natural_width"] == sizes["width"] and sizes["natural_height"] == sizes["height"], name


def test_another_feature_changes_the_pictures(seen):
    assert seen["second"] != seen["first"] and seen["second_about"] != seen["about"]


def test_a_pixel_lists_the_features_active_there(seen):
    assert "pixel (y=" in seen["ranking"] and "features active" in seen["ranking"]
    assert "feature" in seen["ranking"] and "activation" in seen["ranking"]


def test_switching_the_feature_off_shows_after_and_the_judges_verdict(seen):
    assert seen["compare"]
    assert "the judge" in seen["verdict"] and "before:" in seen["verdict"] and "after:" in seen["verdict"]
    assert not seen["clipped"]


def test_a_feature_out_of_range_is_a_message_in_the_panel(seen):
    assert "out of range" in seen["status"] and "0..1535" in seen["status"]


def test_no_javascript_console_errors(seen):
    assert not [e for e in seen["errors"] if "favicon" not in e], seen["errors"]
