"""The run report as a user sees it (issue 12): `snakemake --report`, opened in headless Chromium.

One target (the galaxy, three bands: F200W, F300M and F1000W, the bands of its three-colour
composite) at 1/16 scale runs with every QA product; a perturbed copy of its mosaics plays the
previous release for the `regress` rule; the report is built, opened in Chromium with
background networking disabled, navigated like a user (target, then the quick looks) and
screenshotted; every image and page it embeds must load. The screenshot is kept in
tests/artifacts/report.png (and the test's temporary directory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from conftest import REPO, layouts_with_bands, run_snakemake

pytestmark = pytest.mark.workflow
TARGET = "NGC0628"
BANDS = {"nircam": ["F200W", "F300M"], "miri": ["F1000W"]}
ARTIFACTS = REPO / "tests" / "artifacts"
# Previous release: F200W and F1000W 2% fainter and 0.005 MJy/sr lower; F300M's WCS 2 pixels north.
GAIN, OFFSET = 1.02, 0.005
SHIFTED_BAND, SHIFT_PIXELS = "F300M", 2
EXPECTED_SECTIONS = [
    "01. Mosaics (quick look)",
    "02. Three-colour composite",
    "03. 1/f destriping",
    "04. Level matching",
    "07. Noise",
    "11. Comparison with the previous release",
    "12. Run time and memory",
]


def write_override(path):
    data = {
        "targets": [TARGET],
        "simulation": {"scale": 0.0625, "layouts": layouts_with_bands({"phangs_galaxy": BANDS})},
        # as in test_workflow.py: at 1/16 scale too few reference pixels/sources for anchoring and astrometry
        "anchoring": {"enabled": False},
        # PSF matching and catalogs have their own workflow tests (test_psf.py, test_catalogs.py) and
        # cost this run ~5 CPU minutes; test_report_dag.py checks their sections in the planned report
        "psf": {"enabled": False},
        "catalogs": {"enabled": False},
        "corrections": {
            step: {"enabled": False, "instruments": ["NIRCAM", "MIRI"]} for step in ("align_relative", "align_absolute")
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def make_previous_release(workdir, release):
    """Copies of the run's mosaics, perturbed by known amounts (see GAIN, OFFSET, SHIFT_PIXELS)."""
    expected = {}
    for path in sorted((workdir / "results" / TARGET / "mosaic").glob(f"{TARGET}_*_i2d.fits")):
        band = path.name.split("_")[1]
        out = release / TARGET / "mosaic" / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with fits.open(path) as hdul:
            sci = hdul["SCI"]
            if band == SHIFTED_BAND:
                scale = float(proj_plane_pixel_scales(WCS(sci.header).celestial)[1])
                sci.header["CRVAL2"] += SHIFT_PIXELS * scale
                expected[band] = {"shift_mas": SHIFT_PIXELS * scale * 3.6e6}
            else:
                sci.data = (sci.data / GAIN - OFFSET).astype(np.float32)
                expected[band] = {"gain": GAIN, "offset": GAIN * OFFSET}
            hdul.writeto(out)
    return expected


def checked(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    # JWSTFLOW_REPORT_WORKDIR: reuse (and complete) the run in that directory instead of a new one
    reuse = os.environ.get("JWSTFLOW_REPORT_WORKDIR")
    workdir = Path(reuse) if reuse else tmp_path_factory.mktemp("report")
    override = write_override(workdir / "override.yaml")
    start = time.time()
    checked(run_snakemake(workdir, "--cores", "2", configfiles=[override], timeout=3600))
    release = workdir / "previous_release"
    shutil.rmtree(release, ignore_errors=True)
    expected = make_previous_release(workdir, release)
    regress_cfg = workdir / "regress.yaml"
    regress_cfg.write_text(yaml.safe_dump({"regress": {"previous_release": str(release)}}))
    checked(run_snakemake(workdir, "--cores", "2", configfiles=[override, regress_cfg]))
    report = workdir / "report.html"
    checked(run_snakemake(workdir, "--report", str(report), configfiles=[override, regress_cfg]))
    print(f"run + regress + report: {time.time() - start:.0f} s")
    return {"workdir": workdir, "report": report, "expected": expected}


def embedded(report_html, name):
    """A JSON variable the report embeds (``var results = {...};``)."""
    match = re.search(rf"<script id=\"{name}\">\s*var \w+ = (.*?);\s*</script>", report_html, re.S)
    assert match, f"report has no {name} block"
    return json.loads(match.group(1))


# ----------------------------------------------------------------------------- content of the report
def test_report_has_a_section_per_step_that_ran(report_run):
    html = report_run["report"].read_text()
    categories = embedded(html, "categories")
    assert TARGET in categories, list(categories)
    sections = set(categories[TARGET])
    assert set(EXPECTED_SECTIONS) <= sections, f"missing: {set(EXPECTED_SECTIONS) - sections}"
    # steps that did not run have no section
    assert not {"05. Astrometry", "06. Sky anchoring", "08. PSF kernels", "10. Catalogs"} & sections
    results = embedded(html, "results")
    names = {k.split("/")[-1] for k in results}
    for band in ("F200W", "F300M", "F1000W"):
        assert f"{TARGET}_{band}_quicklook.png" in names
    assert f"{TARGET}_rgb.png" in names
    assert {f"{TARGET}_F200W_stripes.png", f"{TARGET}_F300M_stripes.png"} <= names  # NIRCam only
    assert f"{TARGET}_F1000W_stripes.png" not in names
    assert f"{TARGET}_F1000W_offsets.png" in names and "level_match_F1000W_graph.png" in names
    captions = " ".join(entry["caption"] for entry in results.values())
    assert "steps between tiles indicate poor level matching" in captions.lower()


def test_quicklook_is_stretched_between_2_and_98_percent(report_run):
    """The quick-look PNG's grey levels follow a linear 2-98% stretch of the mosaic: ~2% of the
    covered pixels black and ~2% white."""
    import matplotlib.image

    log = (report_run["workdir"] / "logs" / "report_quicklook" / TARGET / "F300M.log").read_text()
    low, high = map(float, re.search(r"stretch (\S+) \.\. (\S+) MJy/sr", log).groups())
    from qa_plots import valid_science

    sci, _, _ = valid_science(report_run["workdir"] / "results" / TARGET / "mosaic" / f"{TARGET}_F300M_i2d.fits", 1200)
    finite = sci[np.isfinite(sci)]
    assert low == pytest.approx(np.percentile(finite, 2), rel=1e-4)
    assert high == pytest.approx(np.percentile(finite, 98), rel=1e-4)
    png = matplotlib.image.imread(
        report_run["workdir"] / "results" / TARGET / "report" / "mosaics" / f"{TARGET}_F300M_quicklook.png"
    )
    assert png.shape[0] > 300 and png.shape[1] > 300


def test_regress_recovers_the_known_changes(report_run):
    rows = {}
    lines = (report_run["workdir"] / "results" / TARGET / "regress" / f"{TARGET}_regress.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        rows[row["band"]] = {k: (float(v) if k not in ("band", "new", "old") else v) for k, v in row.items()}
    print(json.dumps(rows, indent=1))
    assert set(rows) == {"F200W", "F300M", "F1000W"}
    for band, truth in report_run["expected"].items():
        row = rows[band]
        assert row["common_fraction"] > 0.9, band
        if "gain" in truth:
            assert row["gain"] == pytest.approx(truth["gain"], abs=1e-3), band
            assert row["offset_mjysr"] == pytest.approx(truth["offset"], abs=2e-4), band
            assert abs(row["shift_x_mas"]) < 2 and abs(row["shift_y_mas"]) < 2, band
        else:
            # the old grid is 2 pixels further north: on it, the new image sits 2 pixels south
            assert row["shift_y_mas"] == pytest.approx(-truth["shift_mas"], abs=0.1 * truth["shift_mas"]), band
            assert abs(row["shift_x_mas"]) < 0.1 * truth["shift_mas"], band
    with fits.open(report_run["workdir"] / "results" / TARGET / "regress" / f"{TARGET}_F200W_i2d_regress.fits") as hdul:
        assert hdul[0].header["WFSTEP"] == "regress" and hdul["SCI"].header["BUNIT"] == "MJy/sr"


# ----------------------------------------------------------------------------- as a user sees it
CHECK_SCRIPT = """
<script>
(async function () {
  const out = {errors: [], images: [], pages: [], shown: [], clicked: []};
  window.addEventListener('error', (e) => out.errors.push(String(e.message)));
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const click = async (el, what) => {
    out.clicked.push(what + (el ? '' : ' (not found)'));
    if (el) { el.click(); await wait(400); }
  };
  const byText = (text) => [...document.querySelectorAll('*')]
    .filter((n) => n.children.length === 0 && n.textContent.trim() === text)[0];
  await wait(500);
  try {
    // every image and page the report embeds
    for (const [path, entry] of Object.entries(results)) {
      if (entry.mime_type.startsWith('image/')) {
        const img = new Image();
        const ok = await new Promise((res) => {
          img.onload = () => res(true); img.onerror = () => res(false); img.src = entry.data_uri;
        });
        out.images.push({path: path, ok: ok, width: img.naturalWidth, height: img.naturalHeight});
      } else if (entry.mime_type === 'text/html') {
        const text = await (await fetch(entry.data_uri)).text();
        out.pages.push({path: path, ok: text.includes('<table'), length: text.length});
      }
    }
    // like a user: Results, the target, its quick-look section, the eye button of one band
    await click(byText('Results'), 'Results');
    await click(byText('__TARGET__'), '__TARGET__');
    out.sections = document.body.innerText;
    await click(byText('__SECTION__'), '__SECTION__');
    out.rows = document.body.innerText;
    const row = [...document.querySelectorAll('tr')].filter((n) => n.innerText.includes('__BAND__'))[0];
    await click(row && row.querySelector('a[iconname="eye"]'), 'view __BAND__');
    for (const img of document.querySelectorAll('img')) {
      if (!img.complete) { await new Promise((res) => { img.onload = res; img.onerror = res; }); }
      out.shown.push({src: img.src.slice(0, 60), width: img.naturalWidth, height: img.naturalHeight});
    }
  } catch (err) { out.errors.push(String(err)); }
  const pre = document.createElement('pre');
  pre.id = 'qa-check'; pre.style.display = 'none';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not found: install Debian's `chromium` package (.ci/run does when run as root)")


def run_chromium(binary, page, profile, *args, timeout=180, attempts=2):
    """Headless Chromium on ``page``; a run that hangs past ``timeout`` is tried again with a fresh
    profile (under full CI load one hung past 180 s, and passed when run alone)."""
    for attempt in range(1, attempts + 1):
        cmd = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}-{attempt}", "--hide-scrollbars", "--window-size=1500,1000",
            "--virtual-time-budget=30000", *args, page.as_uri(),
        ]  # fmt: skip
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            if attempt == attempts:
                raise


@pytest.fixture(scope="module")
def browser_view(report_run, tmp_path_factory):
    binary = chromium_binary()
    tmp = tmp_path_factory.mktemp("chromium")
    page = tmp / "report_checked.html"
    script = CHECK_SCRIPT.replace("__TARGET__", TARGET).replace("__SECTION__", EXPECTED_SECTIONS[0])
    # the report's own scripts contain "</body>" in strings: add ours before the last one
    head, body_end, tail = report_run["report"].read_text().rpartition("</body>")
    page.write_text(head + script.replace("__BAND__", "F200W") + body_end + tail)
    dom = run_chromium(binary, page, tmp / "profile", "--dump-dom")
    match = re.search(r'<pre id="qa-check"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert match, f"Chromium did not run the check (rc {dom.returncode}): {dom.stderr[-2000:]}"
    import html as html_lib

    check = json.loads(html_lib.unescape(match.group(1)))
    screenshot = tmp / "report.png"
    shot = run_chromium(binary, page, tmp / "profile2", f"--screenshot={screenshot}")
    assert screenshot.exists(), f"no screenshot (rc {shot.returncode}): {shot.stderr[-2000:]}"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / "report.png")
    return {"check": check, "screenshot": screenshot}


def test_every_image_and_table_in_the_report_loads(browser_view, report_run):
    check = browser_view["check"]
    assert not check["errors"], check["errors"]
    results = embedded(report_run["report"].read_text(), "results")
    n_images = sum(1 for e in results.values() if e["mime_type"].startswith("image/"))
    assert len(check["images"]) == n_images >= 10
    broken = [i["path"] for i in check["images"] if not i["ok"] or i["width"] < 50 or i["height"] < 50]
    assert not broken, f"images that do not load: {broken}"
    assert check["pages"] and all(p["ok"] for p in check["pages"]), check["pages"]


def test_the_page_shows_the_sections_and_an_image(browser_view):
    """After a click on the target the menu lists its sections; the eye button of a band shows its quick look."""
    check = browser_view["check"]
    assert check["clicked"] == ["Results", TARGET, EXPECTED_SECTIONS[0], "view F200W"], check["clicked"]
    for section in EXPECTED_SECTIONS:
        assert section in check["sections"], f"{section!r} not in the menu:\n{check['sections'][:2000]}"
    assert all(band in check["rows"] for band in ("F200W", "F300M", "F1000W")), check["rows"][:2000]
    quicklook = [img for img in check["shown"] if img["src"].startswith("data:image/png")]
    assert len(quicklook) == 1 and quicklook[0]["width"] > 300, check["shown"]
    png = browser_view["screenshot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    print("screenshot:", browser_view["screenshot"], "and", ARTIFACTS / "report.png")
