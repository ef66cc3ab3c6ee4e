"""Data set manifests (``data_manifests/*.yaml``): what a data set is, where it lives under
the data root, how to obtain it, and how to check that it is there and unaltered.

Manifests are read from ``$NBFACELIB_MANIFESTS`` if set, else from ``<repo>/data_manifests``
(the package is installed editable, so that is a path relative to this file).

Fields: ``name``, ``title``, ``format`` (synthetic | folder | rec | pairs-bin | pairs-protocol
| ijb; a ``pairs-protocol`` data set is a folder of images plus its publisher's pair lists,
read by :mod:`nbfacelib.data.protocols`, and its ``alternatives`` may name a ready ``.bin``),
``location`` (relative to the data root; ``alternatives`` lists other accepted places),
``identities`` / ``images`` / ``pairs`` (expected counts; ``counts_verified: false`` marks
figures taken from the publishers' documentation that nobody here could check, whose
mismatch is a warning rather than a failure), ``required`` (files under the location),
``checksums``, ``protocol``, ``processing`` (what was done to the data root's copy),
``validation`` (pair sets of people a training set leaves out: its default validation),
``obtain`` (free text), ``credit``, and ``bundled``: where a data set also ships inside the
package, ``{location: <path under nbfacelib/data/bundled>, checksums: {...}}`` (the shipped copy
may be stored in another lossless format, hence its own checksums). A copy under the data root
takes precedence over the shipped one.

Checksums (scheme ``sha256-listing-v1``): ``files`` maps a path under the location to its
sha256 (``null`` = unknown: never invented); ``tree_sha256`` is the sha256 of the *listing*,
the text ``"<sha256 of file>  <relative path>\\n"`` for every image file under the location
(extensions of :data:`nbfacelib.data.folder.IMAGE_EXTENSIONS`), sorted by path (plain
string order, ``/`` separators). The listing is exactly ``sha256sum`` output, so a
``listing`` file shipped beside the manifest (e.g. ``orl.sha256``) both names the file that
changed and can be checked with ``sha256sum -c`` from inside the data directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .root import ENV_VAR as DATA_ENV_VAR
from .root import bundled_root, data_root

MANIFESTS_ENV = "NBFACELIB_MANIFESTS"
FORMATS = ("synthetic", "folder", "rec", "pairs-bin", "pairs-protocol", "ijb")
LISTING_SCHEME = "sha256-listing-v1"


class ManifestError(ValueError):
    """A manifest (or the checksum listing it names) that cannot be used: not YAML, not UTF-8,
    an unknown field or checksum key, a field of the wrong type. The message names the file
    (and the line, for YAML syntax errors)."""


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where its manifest says; the message says how to obtain it."""


class DatasetIntegrityError(ValueError):
    """A data set is present but altered (counts or checksums differ); ``report`` has details."""

    def __init__(self, message: str, report: VerifyReport | None = None):
        super().__init__(message)
        self.report = report


def manifest_dir() -> Path:
    env = os.environ.get(MANIFESTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data_manifests"


@dataclass
class Manifest:
    name: str
    format: str
    title: str = ""
    location: str | None = None
    alternatives: list[str] = field(default_factory=list)
    identities: int | None = None
    images: int | None = None
    pairs: int | None = None
    counts_verified: bool = False
    required: list[str] = field(default_factory=list)
    checksums: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    processing: str = ""
    validation: list[str] = field(default_factory=list)
    obtain: str = ""
    credit: str = ""
    notes: str = ""
    bundled: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the yaml file

    def candidates(self, root: Path | None = None) -> list[Path]:
        root = data_root() if root is None else root
        locs = [self.location, *self.alternatives] if self.location else list(self.alternatives)
        return [root / loc for loc in locs]

    def bundled_path(self) -> Path | None:
        """The copy shipped inside the package, if the data set has one."""
        loc = self.bundled.get("location")
        return bundled_root() / loc if loc else None

    def find(self, root: Path | None = None) -> Path | None:
        """The first candidate location under the data root that exists, else the copy shipped
        with the package (if any), else None."""
        for p in self.candidates(root):
            if p.exists():
                return p
        shipped = self.bundled_path()
        return shipped if shipped is not None and shipped.exists() else None

    def checksums_for(self, path: Path) -> dict[str, Any]:
        """The checksums that the copy at ``path`` must match (the shipped copy has its own)."""
        if path == self.bundled_path():
            return self.bundled.get("checksums") or {}
        return self.checksums or {}

    def missing_message(self) -> str:
        where = ", ".join(str(p) for p in self.candidates()) or "(no location)"
        return (
            f"data set {self.name!r} ({self.title or self.name}) not found; looked for {where} "
            f"(data root from ${DATA_ENV_VAR} or the default). How to obtain it:\n{self.obtain.strip()}"
        )

    def locate(self) -> Path:
        """The data set's path; :class:`DatasetNotFoundError` (with the obtain text) if absent."""
        if self.format == "synthetic":
            raise ValueError(f"data set {self.name!r} is generated on the fly; it has no location")
        p = self.find()
        if p is None:
            raise DatasetNotFoundError(self.missing_message())
        return p


_FIELDS = set(Manifest.__dataclass_fields__) - {"source"}

# The type each field must have in the YAML (None = the field's default). Checked by hand:
# yaml.safe_load gives plain Python objects and a dozen fields do not justify a schema library.
_TEXT, _COUNT, _TEXTS, _MAPPING = "text", "count", "list of text", "mapping"
_FIELD_KINDS = {
    "name": _TEXT,
    "format": _TEXT,
    "title": _TEXT,
    "location": _TEXT,
    "alternatives": _TEXTS,
    "identities": _COUNT,
    "images": _COUNT,
    "pairs": _COUNT,
    "counts_verified": "bool",
    "required": _TEXTS,
    "checksums": _MAPPING,
    "bundled": _MAPPING,
    "protocol": _MAPPING,
    "params": _MAPPING,
    "obtain": _TEXT,
    "credit": _TEXT,
    "notes": _TEXT,
    "processing": _TEXT,
    "validation": _TEXTS,
}
_CHECKSUM_KEYS = {"scheme", "tree_sha256", "listing", "files"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _kind_ok(value: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _COUNT:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == _TEXTS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _MAPPING:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, bool)


def _check_checksums(cs: dict[str, Any], path: Path) -> None:
    """A misspelt key or a wrong type would silently turn the check off: refuse both."""
    unknown = set(cs) - _CHECKSUM_KEYS
    if unknown:
        raise ManifestError(
            f"{path}: unknown key(s) {sorted(unknown)} under 'checksums'; known: {sorted(_CHECKSUM_KEYS)}"
        )
    if cs.get("scheme", LISTING_SCHEME) != LISTING_SCHEME:
        raise ManifestError(f"{path}: checksum scheme {cs.get('scheme')!r} unknown; use {LISTING_SCHEME}")
    tree = cs.get("tree_sha256")
    if tree is not None and not (isinstance(tree, str) and _HEX64.fullmatch(tree)):
        raise ManifestError(
            f"{path}: checksums.tree_sha256 must be 64 lower-case hex digits or null, got {tree!r}"
        )
    if "listing" in cs and not isinstance(cs["listing"], str):
        raise ManifestError(f"{path}: checksums.listing must be a file name, got {cs['listing']!r}")
    files = cs.get("files", {})
    if not isinstance(files, dict):
        raise ManifestError(f"{path}: checksums.files must be a mapping of path -> sha256, got {files!r}")
    for rel, digest in files.items():
        if not isinstance(rel, str) or not (
            digest is None or (isinstance(digest, str) and _HEX64.fullmatch(digest))
        ):
            raise ManifestError(
                f"{path}: checksums.files entry {rel!r}: {digest!r} is not 64 lower-case hex digits or null"
            )
    if not files and "tree_sha256" not in cs:
        raise ManifestError(
            f"{path}: 'checksums' lists neither files nor tree_sha256 (drop it, or fill it in)"
        )


def load_manifest(name: str) -> Manifest:
    """The manifest ``<manifest dir>/<name>.yaml``; :class:`ManifestError` (a ValueError)
    naming the file for an unknown name or an unusable manifest."""
    import yaml

    path = manifest_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ManifestError(
            f"unknown data set {name!r}; manifests in {manifest_dir()}: "
            + (", ".join(list_manifests()) or "none")
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: a manifest must be a mapping, got {type(raw).__name__}")
    unknown = {k for k in raw if k not in _FIELDS}
    if unknown:
        raise ManifestError(
            f"{path}: unknown manifest field(s) {sorted(map(str, unknown))}; known: {sorted(_FIELDS)}"
        )
    for key in ("name", "format"):
        if raw.get(key) is None:
            raise ManifestError(f"{path}: manifest lacks {key!r}")
    for key, value in raw.items():
        if value is not None and not _kind_ok(value, _FIELD_KINDS[key]):
            raise ManifestError(f"{path}: field {key!r} must be {_FIELD_KINDS[key]}, got {value!r:.80}")
    if raw["name"] != name:
        raise ManifestError(f"{path}: name {raw['name']!r} differs from the file name {name!r}")
    if raw["format"] not in FORMATS:
        raise ManifestError(f"{path}: format {raw['format']!r} is not one of {FORMATS}")
    if raw.get("checksums") is not None:
        _check_checksums(raw["checksums"], path)
    bundled = raw.get("bundled")
    if bundled is not None:
        if set(bundled) - {"location", "checksums"} or not isinstance(bundled.get("location"), str):
            raise ManifestError(f"{path}: 'bundled' must be a mapping with 'location' (and 'checksums')")
        if bundled.get("checksums") is not None:
            if not isinstance(bundled["checksums"], dict):
                raise ManifestError(
                    f"{path}: bundled.checksums must be a mapping, got {bundled['checksums']!r:.80}"
                )
            _check_checksums(bundled["checksums"], path)
    raw = {k: v for k, v in raw.items() if v is not None or k in ("identities", "images", "pairs")}
    return Manifest(source=path, **raw)


def list_manifests() -> list[str]:
    """Names of the available manifests, sorted."""
    d = manifest_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


# ---------------------------------------------------------------------------- checksums
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_listing(root: str | os.PathLike) -> str:
    """``sha256sum``-format listing of the image files under ``root`` (see module docstring)."""
    from .folder import IMAGE_EXTENSIONS

    root = Path(root)
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                rels.append(Path(dirpath, fn).relative_to(root).as_posix())
    return "".join(f"{sha256_file(root / r)}  {r}\n" for r in sorted(rels))


def listing_sha256(listing: str) -> str:
    # surrogateescape: a file name that is not UTF-8 hashes as its own bytes, as sha256sum's
    # output would (plain .encode() raises UnicodeEncodeError on it)
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


def _parse_listing(text: str, source: Path | str = "listing") -> dict[str, str]:
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise ManifestError(f"{source}: line {lineno} is not '<sha256>  <path>': {line[:80]!r}")
            out[parts[1].strip().lstrip("*")] = parts[0]
    return out


# ---------------------------------------------------------------------------- verify
@dataclass
class Check:
    what: str
    expected: Any
    actual: Any
    status: str  # "ok" | "FAIL" | "warn" | "unknown" | "skipped"

    def __str__(self) -> str:
        return f"[{self.status:>7}] {self.what}: expected {self.expected}, found {self.actual}"


@dataclass
class VerifyReport:
    name: str
    path: Path | None
    present: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.present and not any(c.status == "FAIL" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    def add(self, what, expected, actual, status=None, soft: bool = False) -> Check:
        if status is None:
            status = "ok" if expected == actual else ("warn" if soft else "FAIL")
        c = Check(what, expected, actual, status)
        self.checks.append(c)
        return c

    def __str__(self) -> str:
        head = f"{self.name}: {'OK' if self.ok else 'FAILED'} ({self.path or 'not present'})"
        return "\n".join([head, *(f"  {c}" for c in self.checks)])


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
    return n


def _verify_counts(m: Manifest, path: Path, report: VerifyReport, deep: bool) -> None:
    # a protocol's counts were verified on its folder; a ready .bin found in its place is another
    # copy nobody here counted, so a mismatch there only warns
    soft = not m.counts_verified or (m.format == "pairs-protocol" and path.is_file())
    if m.format == "folder":
        if m.images is not None and m.images > 2_000_000 and not deep:
            report.add("identities/images", f"{m.identities}/{m.images}", "not counted (use deep)", "skipped")
            return
        from .folder import scan_image_folder

        classes, paths, _ = scan_image_folder(path, allow_empty=True)
        if m.identities is not None:
            report.add("identities", m.identities, len(classes), soft=soft)
        if m.images is not None:
            report.add("images", m.images, len(paths), soft=soft)
    elif m.format == "rec":
        from .recordio import RecDataset

        ds = RecDataset(path, size=None)
        if m.identities is not None:
            report.add("identities", m.identities, ds.num_classes, soft=soft)
        if m.images is not None:
            report.add("images", m.images, len(ds), soft=soft)
    elif m.format == "pairs-protocol" and path.is_dir():
        from .protocols import protocol_counts

        counts = protocol_counts(m.protocol.get("reader", m.name), path)
        for key in ("identities", "images", "pairs"):
            if getattr(m, key) is not None:
                report.add(key, getattr(m, key), counts[key], soft=soft)
    elif m.format in ("pairs-bin", "pairs-protocol"):  # a protocol's alternative is a ready .bin
        if not deep:
            report.add("pairs", m.pairs, "not counted (use deep: unpickles the file)", "skipped")
            return
        from .pairs import load_pairs

        report.add("pairs", m.pairs, len(load_pairs(path)), soft=soft)
    elif m.format == "ijb":
        faces = [r for r in m.required if r.endswith("_name_5pts_score.txt")]
        if faces and m.images is not None:
            report.add("images (faces)", m.images, _count_lines(path / faces[0]), soft=soft)
        pairs = [r for r in m.required if r.endswith("_template_pair_label.txt")]
        if pairs and m.pairs is not None:
            if deep:
                report.add("template pairs", m.pairs, _count_lines(path / pairs[0]), soft=soft)
            else:
                report.add("template pairs", m.pairs, "not counted (use deep)", "skipped")


def _verify_checksums(m: Manifest, path: Path, report: VerifyReport) -> None:
    cs = m.checksums_for(path)
    base = path if path.is_dir() else path.parent
    for rel, digest in (cs.get("files") or {}).items():
        target = path if (path.is_file() and rel in (".", path.name)) else base / rel
        if not target.is_file():
            report.add(f"sha256 {rel}", digest or "unknown", "missing", "FAIL")
        elif digest is None:
            report.add(f"sha256 {rel}", "unknown (no reference checksum)", "not checked", "unknown")
        else:
            report.add(f"sha256 {rel}", digest, sha256_file(target))
    tree = cs.get("tree_sha256", "absent")
    if tree == "absent":
        return
    if tree is None:
        report.add("tree sha256", "unknown (no reference checksum)", "not checked", "unknown")
        return
    listing = image_listing(path)
    got = listing_sha256(listing)
    if got == tree:
        report.add("tree sha256", tree, got)
        return
    detail = got
    if cs.get("listing") and m.source is not None:
        ref_file = m.source.parent / cs["listing"]
        if ref_file.is_file():
            try:
                ref_text = ref_file.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"{ref_file}: not UTF-8 text (byte offset {exc.start})") from None
            ref, now = _parse_listing(ref_text, ref_file), _parse_listing(listing)
            missing = sorted(set(ref) - set(now))
            extra = sorted(set(now) - set(ref))
            changed = sorted(k for k in set(ref) & set(now) if ref[k] != now[k])
            parts = []
            for label, names in (("missing", missing), ("changed", changed), ("extra", extra)):
                if names:
                    parts.append(f"{label}: {', '.join(names[:5])}" + (" ..." if len(names) > 5 else ""))
            detail = f"{got} ({'; '.join(parts)})"
    report.add("tree sha256", tree, detail, "FAIL")


def verify(name: str, *, deep: bool = False, strict: bool = True) -> VerifyReport:
    """Check that data set ``name`` is present, has the expected counts and checksums.

    Returns a :class:`VerifyReport`. With ``strict`` (default) a missing data set raises
    :class:`DatasetNotFoundError` and an altered one :class:`DatasetIntegrityError`, both
    naming the data set and saying how to obtain it. ``deep`` also does the expensive
    counts (unpickling pair sets, walking folders of millions of files).
    """
    m = load_manifest(name)
    if m.format == "synthetic":
        report = VerifyReport(name, None, True)
        report.add("generated on the fly", "nothing stored", "nothing stored", "ok")
        return report
    path = m.find()
    report = VerifyReport(name, path, path is not None)
    if path is None:
        if strict:
            raise DatasetNotFoundError(m.missing_message())
        return report
    if m.format == "pairs-protocol" and path.is_file():
        # a ready insightface .bin in place of the protocol's folder: the folder's files and
        # checksums do not apply to it (its own sha256 is unknown); its pairs are counted (deep),
        # a mismatch only warning
        report.add("form", "protocol folder", f"ready .bin {path.name} (checksums not applicable)", "ok")
        _verify_counts(m, path, report, deep)
    else:
        for rel in m.required:
            report.add(f"file {rel}", "present", "present" if (path / rel).exists() else "missing")
        if not report.failures:
            try:
                _verify_counts(m, path, report, deep)
            except (OSError, ValueError) as exc:
                report.add("readable", "yes", f"no: {exc}", "FAIL")
            _verify_checksums(m, path, report)
    for c in report.checks:
        if c.status == "warn":
            warnings.warn(f"{name}: {c} (the manifest's counts are unverified)", stacklevel=2)
    if strict and not report.ok:
        bad = "; ".join(f"{c.what}: expected {c.expected}, found {c.actual}" for c in report.failures)
        raise DatasetIntegrityError(
            f"data set {name!r} at {path} is incomplete or altered ({bad}). "
            f"Obtain a fresh copy:\n{m.obtain.strip()}",
            report,
        )
    return report
