"""Pack a bundle into ``dist/<name>_v<version>.zip`` in the MONAI model-zoo layout (what ``make pack`` runs).

    python tools/pack_bundle.py [all | <bundle> ...] [--dist dist] [--with_weights] [--weights_url URL]

The archive holds one top folder named after the bundle (``monai.bundle.download(name=..., url=...)`` extracts
it to ``<bundle_dir>/<name>``)::

    <name>/configs/  <name>/docs/  <name>/scripts/   the bundle's own files (no tests, caches or run outputs)
    <name>/LICENSE                                   the bundle's licence (the model zoo's verify_bundle.py requires
                                                     a LICENSE file in the bundle root)
    <name>/common/                                   a copy of this repository's ``common`` package: the configs
                                                     import it, and an unzipped bundle must run on its own
    <name>/large_files.yml                           where ``models/model.pt`` comes from (model-zoo format,
                                                     read by ``python -m monai.bundle download_large_files``)
    <name>/models/model.pt                           only with ``--with_weights`` (and only if it exists)

The version is ``configs/metadata.json``'s ``version``. Entries are sorted and time-stamped 1980-01-01 so the
same inputs give the same bytes; the zip is written to a temporary name and renamed (``common.files``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/pack_bundle.py` without the editable install
    sys.path.insert(0, str(ROOT))

from common.files import atomic_open  # noqa: E402

BUNDLES = ROOT / "bundles"
BUNDLE_DIRS = ("configs", "docs", "scripts")  # the model-zoo folders a bundle ships (models/ handled apart)
BUNDLE_FILES = ("LICENSE",)  # files of the bundle root the model zoo requires
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".tmp"}
WEIGHTS = "models/model.pt"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PackError(RuntimeError):
    """The bundle folder cannot be packed (says which file and why)."""


def bundle_version(bundle: Path) -> str:
    meta = bundle / "configs" / "metadata.json"
    try:
        version = json.loads(meta.read_text())["version"]
    except FileNotFoundError as e:
        raise PackError(f"{meta}: missing; a bundle needs configs/metadata.json") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PackError(f"{meta}: no readable 'version' field ({e})") from e
    if not isinstance(version, str) or not version.strip():
        raise PackError(f"{meta}: 'version' must be a non-empty string, got {version!r}")
    return version.strip()


def _files(folder: Path) -> list[Path]:
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in SKIP_DIRS for part in rel.parts) or path.suffix in SKIP_SUFFIXES:
            continue
        if path.is_file():
            out.append(path)
    return out


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def large_files_yml(weights: Path, weights_url: str) -> str:
    """The model-zoo ``large_files.yml``: each entry is ``download_url(url, filepath=<bundle>/path, hash_val)``."""
    lines = [
        "# Files kept out of the bundle archive; fetch them into the unzipped bundle with",
        "#   python -m monai.bundle download_large_files --bundle_path <unzipped bundle folder>",
        "# models/model.pt is {'model': state_dict}: train with configs/train.json, or set `url` to where the",
        "# released weights are hosted (empty here: this repository publishes no weights).",
        "large_files:",
        f'  - path: "{WEIGHTS}"',
        f'    url: "{weights_url}"',
    ]
    if weights.is_file():
        lines += [f'    hash_val: "{md5sum(weights)}"', '    hash_type: "md5"']
    else:
        lines += ['    hash_val: ""', '    hash_type: ""']
    return "\n".join(lines) + "\n"


def pack_bundle(
    bundle: str | Path,
    dist: str | Path = ROOT / "dist",
    with_weights: bool = False,
    weights_url: str = "",
    common_dir: str | Path = ROOT / "common",
) -> Path:
    """Write ``<dist>/<name>_v<version>.zip`` for the bundle folder ``bundle``; returns its path."""
    bundle = Path(bundle).resolve()
    name = bundle.name
    version = bundle_version(bundle)
    for sub in BUNDLE_DIRS:
        if not (bundle / sub).is_dir():
            raise PackError(f"{bundle / sub}: missing; a bundle has {', '.join(BUNDLE_DIRS)}")
    for file in BUNDLE_FILES:
        if not (bundle / file).is_file():
            raise PackError(f"{bundle / file}: missing; the model zoo requires it in the bundle root")
    if (bundle / "common").exists():
        raise PackError(f"{bundle / 'common'}: the bundle must not have its own 'common' (the repository's is copied)")
    common_dir = Path(common_dir)
    if not (common_dir / "__init__.py").is_file():
        raise PackError(f"{common_dir}: not the 'common' package (no __init__.py)")
    weights = bundle / WEIGHTS
    if with_weights and not weights.is_file():
        raise PackError(f"{weights}: --with_weights given but the file does not exist (train first)")

    entries: list[tuple[str, Path | bytes]] = []
    for sub in BUNDLE_DIRS:
        entries += [(f"{name}/{p.relative_to(bundle).as_posix()}", p) for p in _files(bundle / sub)]
    entries += [(f"{name}/{file}", bundle / file) for file in BUNDLE_FILES]
    entries += [(f"{name}/common/{p.relative_to(common_dir).as_posix()}", p) for p in _files(common_dir)]
    entries.append((f"{name}/large_files.yml", large_files_yml(weights, weights_url).encode()))
    if with_weights:
        entries.append((f"{name}/{WEIGHTS}", weights))

    out = Path(dist) / f"{name}_v{version}.zip"
    with atomic_open(out, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, src in sorted(entries, key=lambda e: e[0]):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, src if isinstance(src, bytes) else src.read_bytes())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="*", default=["all"], help="bundle names under bundles/, or 'all' (default)")
    p.add_argument("--dist", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    p.add_argument("--with_weights", action="store_true", help="include models/model.pt (error if missing)")
    p.add_argument("--weights_url", default="", help="URL written into large_files.yml for models/model.pt")
    a = p.parse_args(argv)
    names = sorted(d.name for d in BUNDLES.iterdir() if (d / "configs").is_dir())
    wanted = names if a.bundles in ([], ["all"]) else a.bundles
    unknown = [n for n in wanted if n not in names]
    if unknown:
        p.error(f"unknown bundle(s) {unknown}; choose from {names} or 'all'")
    for n in wanted:
        try:
            out = pack_bundle(BUNDLES / n, a.dist, with_weights=a.with_weights, weights_url=a.weights_url)
        except PackError as e:
            print(f"pack_bundle: {e}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(out) as zf:
            count, size = len(zf.namelist()), out.stat().st_size
        print(f"{n}: {out} ({count} files, {size / 1024:.0f} KiB{', with weights' if a.with_weights else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
