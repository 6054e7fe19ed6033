"""Assemble a target's release directory: what a user downloads (CEERS Appendix A).

Layout of ``OUT_DIR``::

    mosaics/<mosaic file>          one ImageModel FITS per band: SCI, ERR, DQ, CON, WHT, VAR_POISSON,
                                   VAR_RNOISE, VAR_FLAT (+ SCI_BKSUB, BKGD, BKGMASK, HDRTAB for deep
                                   fields); DQ is added from WHT (DO_NOT_USE | NON_SCIENCE where no
                                   exposure contributes) when the mosaic has none
    <target>_exposures_cal.tar.gz  the per-exposure corrected files (absolute astrometry applied), a
                                   deterministic tar (sorted, mtime 0) compressed with gzip
    qa/                            QA plots and tables (depths, background, level matching, astrometry)
    extra/                         further products when configured (e.g. PSF-matched images)
    config.json                    the resolved workflow configuration
    README.md                      versions, config hash, inputs, files with sizes and SHA-256, depths

Command line::

    python scripts/release.py --target T --out-dir DIR --config-json JSON --mosaics M.fits ...
        --exposures E_cal.fits ... [--qa F ...] [--extra F ...] [--compresslevel 6] [--log LOG]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
from importlib import metadata
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("release")

RELEASE_EXTENSIONS = ("SCI", "ERR", "DQ", "CON", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")
BACKGROUND_EXTENSIONS = ("SCI_BKSUB", "BKGD", "BKGMASK", "HDRTAB")
PACKAGES = (
    "jwst",
    "stdatamodels",
    "stcal",
    "photutils",
    "astropy",
    "numpy",
    "scipy",
    "drizzle",
    "reproject",
    "snakemake",
    "gwcs",
    "tweakwcs",
)


def sha256(path, chunk=1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def extension_names(path) -> list[str]:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return [h.name for h in hdul[1:]]


def release_mosaic(src, dst, cfg_hash):
    """Copy a mosaic into the release; add DQ (from WHT) if it has none. Returns its extension names."""
    names = extension_names(src)
    missing = [e for e in RELEASE_EXTENSIONS if e not in names and e != "DQ"]
    if missing:
        raise wfutils.InputError(f"{src}: missing extension(s) {', '.join(missing)} for the release")
    if "DQ" in names:
        with wfutils.atomic_output(dst) as tmp:
            shutil.copyfile(src, tmp)
        return names
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    with datamodels.open(str(src)) as model:
        no_data = dqflags.pixel["DO_NOT_USE"] | dqflags.pixel["NON_SCIENCE"]
        covered = np.asarray(model.wht) > 0
        model.dq = np.where(covered & np.isfinite(model.data), 0, no_data).astype(np.uint32)
        wfutils.save_model(model, dst, [src], cfg_hash, "release")
    return extension_names(dst)


def write_archive(paths, out, compresslevel: int = 6, arcdir: str = "exposures") -> None:
    """Deterministic tar.gz of ``paths`` (sorted by name, mtime 0, no owner) under ``arcdir/``."""
    with wfutils.atomic_output(out) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(paths, key=lambda p: Path(p).name):
                    info = tar.gettarinfo(str(path), arcname=f"{arcdir}/{Path(path).name}")
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def depth_summary(qa_files) -> list[str]:
    from astropy.table import Table

    lines = []
    for path in sorted(p for p in qa_files if str(p).endswith("_depth.ecsv")):
        meta = Table.read(path, format="ascii.ecsv").meta
        inj = meta.get("injection", {})
        extra = f", injection-recovery {inj['depth_ab']:.2f}" if inj else ""
        lines.append(f"| {meta.get('band', '?')} | {meta['depth_ab']:.2f} | {meta['encircled_energy']:.3f}{extra} |")
    if lines:
        lines = ['| band | 5-sigma depth (AB, r=0.1" EE-corrected) | EE(0.1") |', "| --- | --- | --- |", *lines]
    return lines


def readme_text(target, config, cfg_hash, mosaics, exposures, files, qa_files) -> str:
    by_band = {}
    for path in exposures:
        name = Path(path).name
        by_band.setdefault("all", []).append(name)
    lines = [
        f"# Release of {target}",
        "",
        f"- workflow version: {wfutils.workflow_version()}",
        f"- config hash: {cfg_hash}",
        f"- CRDS context: {config.get('crds', {}).get('context', 'n/a')}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
        f"- inputs: {len(mosaics)} mosaics, {len(exposures)} corrected exposures, {len(qa_files)} QA files",
        "",
        "## Mosaics",
        "",
        "ImageModel FITS (open with `jwst.datamodels.open` or DS9), MJy/sr. SCI is the drizzled image; where",
        "SCI_BKSUB exists it is SCI minus BKGD, the tiered background (CEERS Sect. 3.3.3), BKGMASK the merged",
        "source mask (bit k = tier k+1) and HDRTAB the metadata of the input exposures.",
        "",
        "| file | extensions |",
        "| --- | --- |",
    ]
    for name, exts in mosaics:
        lines.append(f"| mosaics/{name} | {', '.join(exts)} |")
    depths = depth_summary(qa_files)
    if depths:
        lines += ["", "## Depths", "", *depths]
    lines += [
        "",
        "## Exposures",
        "",
        f"`{target}_exposures_cal.tar.gz`: {len(exposures)} per-exposure corrected",
        "files (all corrections, absolute astrometry in their WCS):",
        "",
    ]
    lines += [f"- {n}" for n in sorted(Path(p).name for p in exposures)]
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "| --- | --- | --- |"]
    for rel, size, digest in files:
        lines.append(f"| {rel} | {size} | {digest} |")
    lines += ["", "The resolved configuration is `config.json`.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--config-json", default="{}", help="resolved workflow config (JSON)")
    parser.add_argument("--mosaics", nargs="+", required=True)
    parser.add_argument("--exposures", nargs="*", default=[])
    parser.add_argument("--qa", nargs="*", default=[])
    parser.add_argument("--extra", nargs="*", default=[])
    parser.add_argument("--compresslevel", type=int, default=6)
    parser.add_argument("--config-hash", default=None)
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    cfg_hash = args.config_hash or os.environ.get(wfutils.CONFIG_HASH_ENV, "standalone")
    config = json.loads(args.config_json)
    for path in [*args.mosaics, *args.exposures, *args.qa, *args.extra]:
        if not Path(path).exists():
            raise wfutils.InputError(f"{path}: file does not exist")
    out = Path(args.out_dir)
    # a directory output: build it next to its final place and rename when complete
    tmp_dir = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    (tmp_dir / "mosaics").mkdir(parents=True)
    try:
        mosaics = []
        for path in args.mosaics:
            wfutils.check_image_file(path, extensions=("SCI", "ERR", "WHT"))
            exts = release_mosaic(path, tmp_dir / "mosaics" / Path(path).name, cfg_hash)
            mosaics.append((Path(path).name, exts))
            log.info("mosaic %s: %s", Path(path).name, ", ".join(exts))
        if args.exposures:
            write_archive(args.exposures, tmp_dir / f"{args.target}_exposures_cal.tar.gz", args.compresslevel)
            log.info("archived %d exposures", len(args.exposures))
        for sub, paths in (("qa", args.qa), ("extra", args.extra)):
            for path in paths:
                (tmp_dir / sub).mkdir(exist_ok=True)
                shutil.copyfile(path, tmp_dir / sub / Path(path).name)
        (tmp_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        files = [
            (str(p.relative_to(tmp_dir)), p.stat().st_size, sha256(p))
            for p in sorted(tmp_dir.rglob("*"))
            if p.is_file()
        ]
        readme = readme_text(args.target, config, cfg_hash, mosaics, args.exposures, files, args.qa)
        (tmp_dir / "README.md").write_text(readme)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp_dir, out)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    log.info(
        "release of %s in %s: %d mosaics, %d exposures, %d QA files",
        args.target,
        out,
        len(mosaics),
        len(args.exposures),
        len(args.qa),
    )


if __name__ == "__main__":
    wfutils.run_cli(main)
