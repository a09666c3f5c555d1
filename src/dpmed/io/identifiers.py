"""Pseudonyms, redaction and the private folder: no patient identifier may reach results/ or logs.

The guarantee is structural: everything ingestion writes under ``results/`` is built from
keyed pseudonyms, table line numbers and whitelisted values (see :mod:`dpmed.io.ingest`); real
paths and identifiers live only in ``private_dir``. This module provides the pieces:

* Pseudonyms are keyed hashes (HMAC-SHA256) of the original identifier. The key is a random
  secret kept in ``private_dir`` — a plain or salted-but-public hash of a short hospital ID
  could be reversed by trying every ID, a keyed one cannot without the key.
* :class:`Redactor` is the second line of defence for free text (error messages): it replaces
  every known identifier in every common spelling — dates with separators or day-first,
  names upper-cased with ``_`` for ``^``, single name parts, other Unicode normal forms or
  without accents, IDs without their dashes, and the Study/Series/SOP Instance UIDs that
  PACS exports use as folder and file names (identifiers under DICOM PS3.15 Annex E).
* :func:`restrict_private` makes ``private_dir`` readable by its owner only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Iterator

# DICOM attributes that identify a patient, a site or a study, or can be linked to one. Their
# values are collected for redaction; none of them is ever copied into an output.
IDENTIFYING_TAGS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "InstitutionName",
    "ReferringPhysicianName",
)
_NAME_TAGS = {"PatientName", "OtherPatientNames", "ReferringPhysicianName"}
_DATE_TAGS = {"PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"}

# Shorter tokens are too common to redact meaningfully (they would mangle ordinary words).
MIN_IDENTIFIER_LENGTH = 3
# What separates the parts of an identifier in the wild: "2020-03-04", "DOE_JOHN", "12.345/6".
_SEPARATORS = r"[\s\-_.^=/,:]*"
_TRANSLITERATION = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})


def load_or_create_key(path: str | Path) -> bytes:
    """Read the pseudonymisation key, creating a new random one (mode 0600, folder 0700) if absent."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: pseudonymisation key is too short (need >= 32 hex characters)")
    return bytes.fromhex(key)


def restrict_private(root: str | Path) -> None:
    """Make ``root`` and everything below it readable by the owner only (folders 0700, files 0600 or stricter).

    Group and other permission bits are removed; the owner's bits are kept, so a file Snakemake
    marked read-only (``protected``) stays read-only.
    """
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.exists() else []
    for path in paths:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o700
        os.chmod(path, mode | (0o700 if path.is_dir() else 0))


def pseudonym(key: bytes, value: str, prefix: str = "P") -> str:
    """A stable, non-reversible pseudonym of ``value`` under ``key`` (e.g. ``P-3fa9c1d27b604e11``)."""
    digest = hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:16]}"


def header_identifiers(ds) -> list[str]:
    """Every identifying string in a pydicom Dataset (names split into their components too)."""
    found: list[str] = []
    for tag in IDENTIFYING_TAGS:
        value = ds.get(tag)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for v in values:
            text = str(v).strip()
            if not text:
                continue
            found.append(text)
            if tag in _NAME_TAGS:
                found.extend(part for part in re.split(r"[\^= ]+", text) if part)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
        found.append(str(meta.MediaStorageSOPInstanceUID))
    return found


def _fold(text: str) -> str:
    """NFC, accents removed (NFD without combining marks): "Müller" and "Mu\u0308ller" -> "Muller"."""
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _canonical(text: str) -> str:
    """The spelling-independent core of an identifier: folded, lower case, separators removed."""
    return re.sub(_SEPARATORS, "", _fold(text)).casefold()


def spellings(identifier: str) -> set[str]:
    """The identifier in the spellings that occur in exports (before separator/case variants).

    A ``YYYYMMDD`` date also as ``DDMMYYYY`` and ``MMDDYYYY``; a name also as its parts and in
    German transliteration (ü -> ue); everything also without accents.
    """
    ident = unicodedata.normalize("NFC", str(identifier).strip())
    out = {ident, _fold(ident), ident.translate(_TRANSLITERATION)}
    if "^" in ident:  # a DICOM person name: its parts appear alone in folder names
        out |= {part for part in re.split(r"[\^=]+", ident) if part}
        out |= {_fold(p) for p in set(out)} | {p.translate(_TRANSLITERATION) for p in set(out)}
    if re.fullmatch(r"\d{8}", ident):
        with contextlib.suppress(ValueError):
            day = dt.datetime.strptime(ident, "%Y%m%d").date()
            out |= {day.strftime("%d%m%Y"), day.strftime("%m%d%Y")}
    return {s for s in out if len(_canonical(s)) >= MIN_IDENTIFIER_LENGTH}


def _pattern(spelling: str) -> str:
    """Regex for one spelling: any separators between its characters, whole tokens only."""
    core = [c for c in _fold(spelling) if not re.fullmatch(_SEPARATORS, c)]
    body = _SEPARATORS.join(re.escape(c) for c in core)
    # A digit run must not continue into more digits, a word into more letters ("ST20200304"
    # still matches the date, "Does" does not match the name "Doe").
    before = r"(?<!\d)" if core[0].isdigit() else r"(?<![^\W\d_])"
    after = r"(?!\d)" if core[-1].isdigit() else r"(?![^\W\d_])"
    return before + body + after


class Redactor:
    """Replace known identifiers in text, in every spelling :func:`spellings` knows.

    ``replacements`` maps identifier → replacement (e.g. an original patient ID → its pseudonym);
    identifiers given only as a list become ``<redacted>``. Longest first, so an ID that contains
    another is replaced whole. Text is compared after Unicode folding (NFC/NFD, accents).

    Cost: one pass over the text's letters and digits per call, whatever the number of known
    identifiers (they are indexed by their first three characters), so a cohort of thousands of
    patients does not need one huge regular expression.
    """

    def __init__(self, replacements: dict[str, str] | None = None, identifiers: Iterable[str] = ()):
        self._lookup: dict[str, str] = {}
        self._spelling: dict[str, str] = {}
        for ident, repl in [*((i, "<redacted>") for i in identifiers), *(replacements or {}).items()]:
            for spelling in spellings(ident):
                canon = _canonical(spelling)
                if repl != "<redacted>" or canon not in self._lookup:
                    self._lookup[canon] = repl
                self._spelling.setdefault(canon, spelling)
        self._by_prefix: dict[str, list[str]] = {}
        for canon in self._lookup:
            self._by_prefix.setdefault(canon[:MIN_IDENTIFIER_LENGTH], []).append(canon)

    def _candidates(self, skeleton: str) -> set[str]:
        """Known identifiers whose core occurs in the text's core (boundaries not yet checked)."""
        hits = set()
        for i in range(len(skeleton) - MIN_IDENTIFIER_LENGTH + 1):
            for canon in self._by_prefix.get(skeleton[i : i + MIN_IDENTIFIER_LENGTH], ()):
                if skeleton.startswith(canon, i):
                    hits.add(canon)
        return hits

    def __call__(self, text: str) -> str:
        text = _fold(str(text))
        hits = self._candidates(_canonical(text))
        if not hits:
            return text
        ordered = sorted(hits, key=len, reverse=True)
        regex = re.compile("|".join(_pattern(self._spelling[c]) for c in ordered), re.IGNORECASE)
        return regex.sub(lambda m: self._lookup.get(_canonical(m.group(0)), "<redacted>"), text)

    def __len__(self) -> int:
        return len(self._lookup)


@contextlib.contextmanager
def quiet_readers() -> Iterator[None]:
    """Silence warnings and library log records while reading a record's files.

    pydicom and nibabel quote header values in their warnings ("Invalid value for VR DA:
    '1970-01-01'"); those would reach the job log. The reasons dpmed reports are its own.
    """
    loggers = [logging.getLogger(name) for name in ("pydicom", "nibabel")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
