"""Tests of medxgan.report: files written, self-containment, escaping, mask outlines, atomicity,
and (marked ``browser``) the interactive page driven in headless Chromium."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from medxgan.report import render_html, write_explanations

EVIL = 'case <script>alert("x")</script> & co'
METHODS = ("difference", "lig", "lig_path", "gradcam", "ig", "ig_negative", "random")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def fake_explanation(name: str, seed: int = 0, size: int = 32, k: int = 6, channels: int = 1, mask: bool = True):
    """An object with the fields of medxgan.explain.Explanation, random but plausible."""
    g = torch.Generator().manual_seed(seed)
    shape = (channels, size, size)
    negative = torch.rand(shape, generator=g) * 2 - 1
    recon = (negative + 0.5 * torch.rand(shape, generator=g)).clamp(-1, 1)
    alphas = torch.linspace(0, 1, k)
    frames = torch.stack([negative * (1 - a) + recon * a for a in alphas])
    lesion = torch.zeros(1, size, size, dtype=torch.bool)
    lesion[:, size // 4 : size // 2, size // 3 : size // 3 + 8] = True
    maps = {m: torch.randn(shape, generator=g) * (0.01 if m.startswith(("lig", "ig")) else 1.0) for m in METHODS}
    return SimpleNamespace(
        name=name,
        image=(recon + 0.01 * torch.randn(shape, generator=g)).clamp(-1, 1),
        reconstruction=recon,
        negative=negative,
        frames=frames,
        frame_probs=torch.linspace(0.05, 0.95, k) ** 1.5,
        alphas=alphas,
        monotone=bool(seed % 2 == 0),
        prob_image=0.9,
        prob_reconstruction=0.88,
        prob_negative=0.05,
        quality={"mse": 0.01, "psnr": 26.5, "ssim": 0.81, "delta_prob": float("nan")},
        maps=maps,
        accumulated=(frames[1:] - frames[:-1]).abs().sum(0),
        z1=torch.randn(8, generator=g),
        z2=torch.randn(3, generator=g),
        completeness={"lig": 0.97, "ig": 1.01},
        mask=lesion if mask else None,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    explanations = [
        fake_explanation(EVIL, seed=0, mask=True),
        fake_explanation("dir/sub/img 2.png", seed=1, mask=False, channels=3),
        fake_explanation("dir/sub/img 2.png", seed=2, mask=False),  # same name: file names must differ
    ]
    path = write_explanations(explanations, out, title="Test <report>", model_info={"classifier": "tiny <cnn>"})
    return SimpleNamespace(out=out, path=path, html=path.read_text("utf-8"), explanations=explanations)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.data: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = [k for k, _ in attrs]
        assert len(names) == len(set(names)), f"duplicate attribute in <{tag} {attrs}>"
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.data.append(data)


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_all_files_written(report):
    out = report.out
    assert report.path == out / "report.html"
    summary = json.loads((out / "summary.json").read_text())
    safes = [r["safe_name"] for r in summary["images"]]
    assert len(safes) == 3 and len(set(s.casefold() for s in safes)) == 3
    for s in safes:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", s), s
        for kind in ("original", "reconstruction", "negative", "accumulated", *METHODS):
            assert (out / "images" / f"{s}_{kind}.png").is_file(), (s, kind)
        gif = Image.open(out / "images" / f"{s}_interpolation.gif")
        assert getattr(gif, "n_frames", 1) == 2 * 6 - 2  # ping-pong over 6 frames
        with np.load(out / "raw" / f"{s}.npz") as raw:
            for key in ("image", "reconstruction", "negative", "frames", "frame_probs", "alphas", "z1", "z2"):
                assert key in raw.files, key
            assert all(f"map_{m}" in raw.files for m in (*METHODS, "accumulated"))
            assert raw["frames"].shape[0] == 6
        data = json.loads((out / "json" / f"{s}.json").read_text(), parse_constant=lambda c: pytest.fail(c))
        assert len(data["frame_probs"]) == 6 and data["quality"]["delta_prob"] is None  # NaN -> null
        assert set(data) >= {"prob_image", "prob_reconstruction", "prob_negative", "monotone", "completeness"}
    with np.load(out / "raw" / f"{safes[0]}.npz") as raw:
        assert raw["mask"].dtype == bool
        np.testing.assert_array_equal(raw["image"], report.explanations[0].image.numpy())
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_html_self_contained(report):
    html = report.html
    assert "http://" not in html and "https://" not in html
    tags = _parse(html).tags
    imgs = [a for t, a in tags if t == "img"]
    assert imgs and all(a["src"].startswith("data:image/") for a in imgs)
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "poster", "data"):
            v = attrs.get(key)
            if v is not None and key != "data":
                assert not re.match(r"\s*(https?:)?//", v), (tag, key, v)
                assert tag != "script", "scripts must be inline"
        if tag == "link":
            assert attrs.get("href", "").startswith("data:"), attrs
    assert "@import" not in html and "url(http" not in html
    # every frame of every interpolation is a data URI too
    frame_json = re.findall(r'<script type="application/json" class="frame-data">(.*?)</script>', html, re.S)
    assert len(frame_json) == 3
    for block in frame_json:
        data = json.loads(block)
        assert len(data["src"]) == 6 and all(s.startswith("data:image/png;base64,") for s in data["src"])


def test_summary_table_and_escaping(report):
    html = report.html
    tags = _parse(html).tags
    rows = [a for t, a in tags if t == "tr" and a.get("class") == "summary-row"]
    assert len(rows) == 3
    assert rows[0]["data-name"] == EVIL  # the parser unescapes attribute values: round trip
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "Test &lt;report&gt;" in html and "tiny &lt;cnn&gt;" in html
    scripts = [a for t, a in tags if t == "script"]
    assert len(scripts) == 1 + 3  # our code + one frame-data block per image
    # each summary row links to an existing section
    for t, a in tags:
        if t == "a" and a.get("href", "").startswith("#img-"):
            assert f'id="{a["href"][1:]}"' in html
    for key in ("frame-slider", "frame-img", "frame-prob", "frame-marker"):
        assert sum(key in a.get("class", "").split() for _, a in tags) == 3, key
    assert "99.5th percentile" in html


def test_mask_outline_drawn_on_every_map(report):
    out = report.out
    safes = [r["safe_name"] for r in json.loads((out / "summary.json").read_text())["images"]]
    mask = report.explanations[0].mask[0].numpy()
    from scipy.ndimage import binary_erosion

    boundary = mask & ~binary_erosion(mask, border_value=1)
    for kind in ("original", *METHODS):
        a = np.asarray(Image.open(out / "images" / f"{safes[0]}_{kind}.png").convert("RGB"))
        cyan = (a[..., 0] == 0) & (a[..., 1] == 255) & (a[..., 2] == 255)
        np.testing.assert_array_equal(cyan, boundary, err_msg=kind)
    for kind in ("original", *METHODS):  # no mask -> no outline
        a = np.asarray(Image.open(out / "images" / f"{safes[1]}_{kind}.png").convert("RGB"))
        assert not ((a[..., 0] == 0) & (a[..., 1] == 255) & (a[..., 2] == 255)).any(), kind
    html = report.html
    assert html.count('data-mask="true"') == 1 and html.count('data-mask="false"') == 2
    assert "lesion outline" in html


def test_report_html_written_last_and_removed_on_failure(tmp_path, monkeypatch):
    e = [fake_explanation("a", seed=0), fake_explanation("b", seed=1)]
    order = []
    real_replace = os.replace

    def spy(src, dst, *a, **k):
        order.append(Path(dst).name)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", spy)
    write_explanations(e, tmp_path / "r")
    assert order[-1] == "report.html" and order.count("report.html") == 1
    assert order[-2] == "summary.json"

    def failing(src, dst, *a, **k):
        if Path(dst).name == "summary.json":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(Exception):
        write_explanations(e, tmp_path / "r")
    assert not (tmp_path / "r" / "report.html").exists(), "a failed run must not leave a complete-looking report"
    assert not list((tmp_path / "r").rglob("*.tmp"))


def test_render_html_minimal_objects():
    """Only name and image are required; missing optional fields degrade gracefully."""
    e = SimpleNamespace(name="bare", image=torch.zeros(1, 16, 16))
    html = render_html([e], title="t")
    assert html.count('class="summary-row"') == 1 and 'class="frame-slider"' not in html
    assert "\u2014" in html  # missing probabilities shown as a dash
    assert 'class="summary-row"' not in render_html([])


def test_ensemble_agreement_in_table_panels_and_json(tmp_path):
    """An ensemble's agreement gets a summary column, a header figure and its JSON field; its maps
    say they are a mean. A single explanation's report has none of these."""
    single = fake_explanation("one.png", seed=1)
    assert "Agreement" not in render_html([single]) and "mean of" not in render_html([single])
    pair = [fake_explanation(f"e{i}.png", seed=i) for i in range(2)]
    for e, r in zip(pair, (0.912, 0.347)):
        e.members, e.agreement = 2, r
    html = render_html(pair)
    assert "<th" in html and ">Agreement</th>" in html
    assert '<td class="num">0.912</td>' in html and '<td class="num">0.347</td>' in html
    assert "agreement of 2 explanations <b>0.347</b>" in html
    # the generator's maps say they are a mean; Grad-CAM and IG explain the classifier alone
    captions = dict(re.findall(r'data-kind="([^"]+)".*?<span class="s">([^<]*)</span>', html.split("</section>")[0]))
    assert all("mean of 2 explanations" in captions[k] for k in ("difference", "lig", "ig_negative", "accumulated"))
    assert not any("mean of" in captions[k] for k in ("gradcam", "ig"))
    write_explanations(pair, tmp_path / "rep")
    (path,) = (tmp_path / "rep/json").glob("e1*.json")
    row = json.loads(path.read_text())
    assert row["members"] == 2 and row["agreement"] == pytest.approx(0.347)
    from medxgan.report import read_image_row

    assert read_image_row(tmp_path / "rep", row["safe_name"])["agreement"] == pytest.approx(0.347)


def test_large_images_are_downscaled_in_page(tmp_path):
    e = fake_explanation("big", size=320, k=2, mask=False)
    e.maps = {"difference": e.maps["difference"]}
    path = write_explanations([e], tmp_path)
    html = path.read_text()
    src = re.search(r'<img[^>]*src="data:image/png;base64,([^"]+)"[^>]*alt="Original"', html).group(1)
    import base64
    import io

    assert max(Image.open(io.BytesIO(base64.b64decode(src))).size) <= 256
    assert Image.open(tmp_path / "images" / "big_original.png").size == (320, 320)  # files keep full size


@pytest.mark.browser
def test_report_in_headless_chromium(report, tmp_path, monkeypatch):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"headless browser test needs {', '.join(missing)} "
                    "(Debian: apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--window-size=1280,1600", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(report.path.resolve().as_uri())
        assert "Test <report>" == driver.title
        assert len(driver.find_elements(By.CSS_SELECTOR, "tr.summary-row")) == 3
        panel = driver.find_elements(By.CSS_SELECTOR, ".interp")[0]
        slider = panel.find_element(By.CSS_SELECTOR, ".frame-slider")
        img = panel.find_element(By.CSS_SELECTOR, ".frame-img")
        prob = panel.find_element(By.CSS_SELECTOR, ".frame-prob")
        marker = panel.find_element(By.CSS_SELECTOR, ".frame-marker")
        src0, text0, cx0 = img.get_attribute("src"), prob.text, marker.get_attribute("cx")
        assert src0.startswith("data:image/png") and "P(positive) = 0.011" in text0  # 0.05 ** 1.5

        # as a user: focus the slider and press the arrow key
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
        slider.send_keys(Keys.ARROW_RIGHT)
        assert slider.get_attribute("value") == "1"
        assert img.get_attribute("src") != src0 and prob.text != text0 and marker.get_attribute("cx") != cx0

        # jump to the last frame programmatically, as a drag would
        driver.execute_script(
            "arguments[0].value = arguments[0].max;"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", slider)
        last = report.explanations[0].frame_probs[-1].item()
        assert f"P(positive) = {last:.3f}" in prob.text and "\u03b1 = 1.00" in prob.text
        assert panel.get_attribute("data-frame") == "5"
        expected = json.loads(panel.find_element(By.CSS_SELECTOR, "script.frame-data").get_attribute("textContent"))
        assert img.get_attribute("src") == expected["src"][5]
        # images decoded (a broken data URI has naturalWidth 0)
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length;")
        assert broken == 0

        driver.execute_script("window.scrollTo(0, 0);")
        height = min(int(driver.execute_script("return document.documentElement.scrollHeight;")), 4000)
        driver.set_window_size(1280, height)
        assert driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000

        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, severe
        # the log check is not vacuous: an error in the page does show up as SEVERE
        driver.execute_script("console.error('medxgan-probe');")
        assert any("medxgan-probe" in e.get("message", "") for e in driver.get_log("browser")
                   if e.get("level") == "SEVERE")
    finally:
        driver.quit()
