"""Benchmark of the tiered mosaic background (issue 10): time and peak memory at full size; one JSON line.

A full-size deep-field mosaic is made synthetically (``tests/deep_mosaic.py``: realistic galaxy
counts, the simulator's PSF and renderer, drizzle-like correlated noise of 0.0025 MJy/sr, a
detector gap) at 0.03"/px -- by default 10,500 x 4,800 pixels, one CEERS NIRCam pointing (both
modules, ~5.2' x 2.4') -- plus the injected plane + wisp-like background of the tests, written
as an i2d ImageModel FITS. The three workflow steps then run as separate processes, as the
rules run them: ``tiers`` (stages 1-2), ``merge`` (one band) and ``subtract`` (stage 3 and the
CEERS-layout output); wall time, CPU time and peak RSS (``/usr/bin/time``) per process, and the
accuracy on source-free pixels (RMS residual / amplitude). The published implementations take
30-60 min per filter.

    python tests/bench/mosaic_background.py [--shape 4800 10500] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests")]

import deep_mosaic  # noqa: E402


def timed(cmd) -> dict:
    """Run ``cmd`` under /usr/bin/time: wall and CPU seconds, peak RSS in MB."""
    start = time.time()
    result = subprocess.run(["/usr/bin/time", "-f", "TIME %e %U %S %M", *cmd], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("TIME ")][-1].split()
    return {
        "wall_s": round(time.time() - start, 1),
        "cpu_s": round(float(line[2]) + float(line[3]), 1),
        "peak_rss_mb": round(int(line[4]) / 1024),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[4800, 10500], help='ny nx (pixels of 0.03")')
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bkg_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    try:
        t0 = time.time()
        m = deep_mosaic.make_deep_mosaic(shape, 0.03, "F200W", seed=1)
        injected = deep_mosaic.injected_background(shape)
        mosaic = deep_mosaic.write_mosaic(
            work / "BENCH_F200W_i2d.fits", m["sci"] + injected, m["err"], m["valid"], 0.03
        )
        build_s = time.time() - t0
        valid = m["valid"]
        del m
        py, script = sys.executable, str(REPO / "scripts" / "mosaic_background.py")
        steps = {
            "tiers": timed([py, script, "tiers", str(mosaic), str(work / "tiers.fits")]),
            "merge": timed([py, script, "merge", str(work / "tiers.fits"), "--out", str(work / "mask.fits")]),
            "subtract": timed(
                [
                    py,
                    script,
                    "subtract",
                    str(mosaic),
                    str(work / "out_i2d.fits"),
                    "--mask",
                    str(work / "mask.fits"),
                    "--qa-png",
                    str(work / "qa.png"),
                ]
            ),
        }
        from astropy.io import fits

        with fits.open(work / "out_i2d.fits") as hdul:
            background = np.asarray(hdul["BKGD"].data, np.float64)
            free = valid & (np.asarray(hdul["BKGMASK"].data) == 0)
        amplitude = float(np.ptp(injected[valid]))
        residual = background[free] - injected[free]
        result = {
            "bench": "mosaic_background",
            "shape": list(shape),
            "pixel_scale_arcsec": 0.03,
            "megapixels": round(shape[0] * shape[1] / 1e6, 1),
            "input_mb": round((work / "BENCH_F200W_i2d.fits").stat().st_size / 1e6),
            "build_s": round(build_s, 1),
            "steps": steps,
            "total_wall_s": round(sum(s["wall_s"] for s in steps.values()), 1),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values()),
            "source_free_fraction": round(float(free.sum() / valid.sum()), 3),
            "residual_rms_over_amplitude": round(float(np.sqrt(np.mean(residual**2))) / amplitude, 4),
        }
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
