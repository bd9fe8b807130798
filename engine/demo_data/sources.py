"""Where the real anatomy comes from: files inside installed packages (pip `nilearn`) and inside
Debian packages (`invesalius-examples`, `mricron-data`) that the builder finds installed, in a
cache of downloaded .deb files, or fetches with `apt-get download`. Nothing here runs in the app.
"""
from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

NILEARN_PIN = "nilearn==0.14.1"
MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
HEAD_CT_PACKAGE = "invesalius-examples"
HEAD_CT_MEMBER = "examples/Cranium.inv3"
COLIN_PACKAGE = "mricron-data"
COLIN_MEMBERS = ("templates/ch2.nii.gz", "templates/ch2bet.nii.gz")


MNI_NOTICE = ("Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
              "Institute, McGill University. Permission to use, copy, modify, and distribute this software and its "
              "documentation for any purpose and without fee is hereby granted, provided that the above copyright "
              "notice appear in all copies. The authors and McGill University make no representations about the "
              "suitability of this software for any purpose. It is provided \"as is\" without express or implied "
              "warranty. The authors are not responsible for any data loss, equipment damage, property loss, or "
              "injury to subjects or patients resulting from the use or misuse of this software package.")

# The sources with their licences (written into dataset.json; ``source`` is the name subjects carry)
SOURCES: list[dict] = [
    {"name": "MNI ICBM152 2009a nonlinear symmetric template (T1, GM, WM probability maps)",
     "package": "pip nilearn==0.14.1 (files under nilearn/datasets/data/)", "source": "mni152",
     "licence": "MNI template licence (permissive, copyright notice required); nilearn code BSD-3-Clause",
     "notice": MNI_NOTICE},
    {"name": "Colin27 T1 (ch2.nii.gz) and its brain extraction (ch2bet.nii.gz)",
     "package": "Debian mricron-data (templates/)", "source": "colin27",
     "licence": "BSD-3-Clause (Debian copyright of mricron-data); the Colin27 average was made at the MNI, "
                "its notice (as for ICBM152) is kept as well", "notice": MNI_NOTICE},
    {"name": "InVesalius example head CT 'Cranium.inv3' (ProMED CT 0051, HU)",
     "package": "Debian invesalius-examples (examples/Cranium.inv3)", "source": "invesalius-cranium",
     "licence": "GPL-2 (Debian copyright of invesalius-examples)"},
]


class SourceMissing(RuntimeError):
    """A source of real anatomy cannot be found or fetched; the message says how to get it."""


def default_cache_dir() -> Path:
    """``$SYNERMEDGEN_CACHE`` or ``~/.cache/synermedgen``; .deb files go under ``debs/``."""
    env = os.environ.get("SYNERMEDGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "synermedgen"


# -- MNI ICBM152 2009a from the nilearn wheel ----------------------------------------------------
def find_mni152() -> dict[str, Path]:
    """Paths of the MNI ICBM152 2009a T1, GM and WM maps shipped inside the nilearn wheel.

    Only the package folder is located: importing ``nilearn.datasets`` would pull in scikit-learn
    and pandas, which the product does not install.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"the MNI ICBM152 template comes with the pip package nilearn; install it with "
                            f"`.venv/bin/pip install --no-deps {NILEARN_PIN}`")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {key: data / name for key, name in MNI_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SourceMissing(f"nilearn is installed but lacks the MNI ICBM152 files ({', '.join(missing)}); "
                            f"install `{NILEARN_PIN}`")
    return paths


# -- Debian packages -----------------------------------------------------------------------------
def _installed_file(package: str, suffix: str) -> Path | None:
    """A file of an installed Debian package whose path ends with ``suffix`` (dpkg -L)."""
    if shutil.which("dpkg") is None:
        return None
    try:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if listing.returncode != 0:
        return None
    for line in listing.stdout.splitlines():
        if line.endswith(suffix) and Path(line).is_file():
            return Path(line)
    return None


def _cached_deb(package: str, debs: Path) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb")) if debs.is_dir() else []
    return found[-1] if found else None


def _download_deb(package: str, debs: Path) -> tuple[Path | None, str]:
    """``apt-get download PACKAGE`` into ``debs`` (a package-registry fetch, builder only)."""
    if shutil.which("apt-get") is None:
        return None, "apt-get is not available on this machine"
    debs.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True,
                             timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"apt-get download failed ({exc})"
    deb = _cached_deb(package, debs)
    if run.returncode != 0 or deb is None:
        lines = [ln for ln in (run.stderr or run.stdout).splitlines() if ln.strip() and not ln.startswith("W:")]
        return None, f"apt-get download {package} failed: {(lines or ['no output'])[-1][:200]}"
    return deb, ""


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """The data archive of a .deb (an `ar` archive holding data.tar.xz/.gz/.zst…), read in Python
    so no dpkg is needed (the same content `dpkg-deb -x` extracts)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SourceMissing(f"{deb} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = raw[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise SourceMissing(f"{deb}: zstd-compressed data archive; extract it with `dpkg-deb -x`")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size % 2)
    raise SourceMissing(f"{deb} holds no data.tar member")


def _extract_members(deb: Path, suffixes: tuple[str, ...], target: Path) -> dict[str, Path]:
    """Copy the members of ``deb`` whose paths end with ``suffixes`` into ``target``."""
    out: dict[str, Path] = {}
    with _deb_data_tar(deb) as tar:
        for member in tar.getmembers():
            for suffix in suffixes:
                if member.isfile() and member.name.endswith(suffix) and suffix not in out:
                    dest = target / Path(suffix).name
                    target.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".{dest.name}.part")
                    with tar.extractfile(member) as src, open(tmp, "wb") as dst:   # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst)
                    os.replace(tmp, dest)
                    out[suffix] = dest
    return out


def _find_or_fetch(package: str, suffixes: tuple[str, ...], cache_dir: str | Path | None,
                   what: str) -> dict[str, Path]:
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    installed = {s: _installed_file(package, s) for s in suffixes}
    if all(installed.values()):
        return installed  # type: ignore[return-value]
    extracted = cache / package
    if all((extracted / Path(s).name).is_file() for s in suffixes):
        return {s: extracted / Path(s).name for s in suffixes}
    debs = cache / "debs"
    deb = _cached_deb(package, debs)
    why = ""
    if deb is None:
        deb, why = _download_deb(package, debs)
    if deb is not None:
        found = _extract_members(deb, suffixes, extracted)
        if len(found) == len(suffixes):
            return found
        why = f"{deb.name} lacks {', '.join(s for s in suffixes if s not in found)}"
    raise SourceMissing(
        f"{what} comes from the Debian package {package}, which is neither installed nor cached in {debs} "
        f"({why}). Fetch it with `apt-get download {package}` into {debs} (run `apt-get update` first on a "
        f"fresh machine), or install it with `apt-get install {package}`.")


def find_or_fetch_head_ct(cache_dir: str | Path | None = None) -> Path:
    """Path of InVesalius' ``Cranium.inv3`` (a real head CT in HU, GPL-2): the installed package's
    copy, else one extracted from a cached ``invesalius-examples`` .deb, else one fetched with
    ``apt-get download``. :class:`SourceMissing` names the package when none works."""
    return _find_or_fetch(HEAD_CT_PACKAGE, (HEAD_CT_MEMBER,), cache_dir, "The real head CT")[HEAD_CT_MEMBER]


def find_or_fetch_colin27(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of the Colin27 T1 (``ch2.nii.gz``, with scalp) and its brain extraction
    (``ch2bet.nii.gz``) from ``mricron-data`` (BSD-3), found or fetched like the head CT."""
    found = _find_or_fetch(COLIN_PACKAGE, COLIN_MEMBERS, cache_dir, "The Colin27 brain")
    return {"t1": found[COLIN_MEMBERS[0]], "brain": found[COLIN_MEMBERS[1]]}
