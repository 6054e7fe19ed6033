"""Benchmark of PSF matching (issue 7): kernels for the PHANGS bands and one full-size MIRI convolution, one JSON line.

Runs the scripts the way rules/psf.smk does, one process at a time, and times each (wall seconds,
peak RSS of the process):

1. ``psf_model.py`` for each band (default the 8 PHANGS-JWST bands, config ``psf.model``
   settings), unless ``--psf-dir`` holds ``<band>_psf.fits`` already;
2. ``make_kernel.py`` for every kernel of those bands: to the Gaussians of ``psf.resolutions_arcsec``
   and from each band to the broadest (F2100W);
3. ``convolve_image.py`` of a synthetic full-size MIRI mosaic (F2100W, 0.093" pixels = the
   workflow's MIRI grid, ``--shape`` default 4152 x 5144 = 8 x the demo's 1/8-scale mosaic:
   noise, a smooth disk, point sources, NaN outside a tilted footprint; SCI, ERR, WHT) with the
   F2100W -> 0.9" kernel, and ``noise_curve.py`` on the same mosaic.

    .venv/bin/python tests/bench/psf.py [--workdir DIR] [--bands F200W,...] [--psf-dir DIR] [--shape NY NX]

Output: {"bench": "psf", "bands": [...], "psf": {"s_total", "max_rss_mb", "per_band_s"},
"kernels": {"n", "s_total", "max_rss_mb", "per_kernel_s"}, "convolve": {"shape", "s", "max_rss_mb",
"mosaic_mb"}, "noise_curve": {"s", "max_rss_mb"}, "cores": 1}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
PHANGS_BANDS = ["F200W", "F300M", "F335M", "F360M", "F770W", "F1000W", "F1130W", "F2100W"]


def run(args, log_dir: Path, name: str) -> tuple[float, float]:
    """Run a script, return (wall seconds, peak RSS MB) of its process; raise with its log on failure."""
    log = log_dir / f"{name}.log"
    cmd = [sys.executable, *map(str, args), "--log", str(log)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    stderr = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{stderr[-2000:]}\n{log.read_text()[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0


def synthetic_miri_mosaic(path: Path, shape, seed: int = 1) -> None:
    """F2100W-like mosaic: 0.093" pixels, noise 0.2 MJy/sr, a smooth disk, 300 point sources, tilted footprint."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    ny, nx = shape
    scale = 0.093
    y, x = np.indices(shape, dtype=np.float32)
    u = (x - nx / 2) * np.cos(0.35) + (y - ny / 2) * np.sin(0.35)
    v = -(x - nx / 2) * np.sin(0.35) + (y - ny / 2) * np.cos(0.35)
    inside = (np.abs(u) < 0.4 * nx) & (np.abs(v) < 0.4 * ny)
    r = np.hypot(u / (0.25 * nx), v / (0.2 * ny))
    sci = (2.0 * np.exp(-r)).astype(np.float32)
    del u, v, r, y, x
    stars = np.zeros(shape, np.float32)
    iy, ix = rng.integers(0, ny, 300), rng.integers(0, nx, 300)
    stars[iy, ix] = rng.uniform(5, 500, 300)
    sci += gaussian_filter(stars, 0.67 / 2.3548 / scale)
    del stars
    sci += rng.normal(0.0, 0.2, shape).astype(np.float32)
    sci[~inside] = np.nan
    err = np.where(inside, 0.2, np.nan).astype(np.float32)
    wht = np.where(inside, 1.0, 0.0).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [24.173946, 15.783662]
    wcs.wcs.crpix = [nx / 2, ny / 2]
    wcs.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    header = wcs.to_header()
    header["BUNIT"] = "MJy/sr"
    primary = fits.PrimaryHDU()
    primary.header["FILTER"] = "F2100W"
    primary.header["INSTRUME"] = "MIRI"
    hdus = [primary, fits.ImageHDU(sci, header, name="SCI"), fits.ImageHDU(err, header, name="ERR"),
            fits.ImageHDU(wht, header, name="WHT")]  # fmt: skip
    fits.HDUList(hdus).writeto(path, overwrite=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="keep the files here (default: a temporary directory, removed)")
    parser.add_argument("--bands", default=",".join(PHANGS_BANDS))
    parser.add_argument("--psf-dir", help="directory with <band>_psf.fits to reuse (PSF step skipped)")
    parser.add_argument("--shape", nargs=2, type=int, default=[4152, 5144], help="MIRI mosaic shape (ny nx)")
    args = parser.parse_args(argv)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["psf"]
    bands = args.bands.split(",")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-psf-"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = {"bench": "psf", "bands": bands, "cores": 1, "model": config["model"]["model"]}
    try:
        psf_dir = Path(args.psf_dir) if args.psf_dir else work / "psf"
        psf_dir.mkdir(parents=True, exist_ok=True)
        per_band, rss = {}, []
        if not args.psf_dir:
            for band in bands:
                s, m = run([SCRIPTS / "psf_model.py", "--filter", band, "--params", json.dumps(config["model"]),
                            "--out", psf_dir / f"{band}_psf.fits"], logs, f"psf_{band}")  # fmt: skip
                per_band[band], _ = round(s, 2), rss.append(m)
        out["psf"] = {"s_total": round(sum(per_band.values()), 1), "max_rss_mb": round(max(rss, default=0), 1),
                      "per_band_s": per_band, "reused_from": args.psf_dir}  # fmt: skip
        kernels, rss = {}, []
        kparams = json.dumps(config["kernel"])
        broadest = max(bands, key=lambda f: int(f[1:-1]))
        jobs = [(b, f"gauss:{r:g}", f"{b}_to_gauss{r:.2f}".replace(".", "p")) for b in bands for r in
                config["resolutions_arcsec"]]  # fmt: skip
        jobs += [(b, str(psf_dir / f"{broadest}_psf.fits"), f"{b}_to_{broadest}") for b in bands if b != broadest]
        for band, target, name in jobs:
            s, m = run([SCRIPTS / "make_kernel.py", "--source", psf_dir / f"{band}_psf.fits", "--target", target,
                        "--params", kparams, "--out", work / "kernels" / f"{name}.fits"], logs, name)  # fmt: skip
            kernels[name], _ = round(s, 2), rss.append(m)
        out["kernels"] = {"n": len(kernels), "s_total": round(sum(kernels.values()), 1),
                          "max_rss_mb": round(max(rss), 1), "per_kernel_s": kernels}  # fmt: skip
        mosaic = work / "NGC0628_F2100W_i2d.fits"
        synthetic_miri_mosaic(mosaic, tuple(args.shape))
        kernel = work / "kernels" / "F2100W_to_gauss0p90.fits"
        if not kernel.exists():
            run([SCRIPTS / "make_kernel.py", "--source", psf_dir / "F2100W_psf.fits", "--target", "gauss:0.9",
                 "--out", kernel], logs, "kernel_F2100W")  # fmt: skip
        s, m = run([SCRIPTS / "convolve_image.py", "--kernel", kernel, "--params", json.dumps(config["convolve"]),
                    mosaic, work / "matched.fits"], logs, "convolve")  # fmt: skip
        out["convolve"] = {"shape": list(args.shape), "pixel_arcsec": 0.093, "s": round(s, 1),
                           "max_rss_mb": round(m, 1), "mosaic_mb": round(mosaic.stat().st_size / 1e6, 1)}  # fmt: skip
        s, m = run([SCRIPTS / "noise_curve.py", "--psf", psf_dir / "F2100W_psf.fits", "--table", work / "nc.ecsv",
                    "--png", work / "nc.png", mosaic], logs, "noise_curve")  # fmt: skip
        out["noise_curve"] = {"s": round(s, 1), "max_rss_mb": round(m, 1)}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
