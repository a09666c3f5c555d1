"""Pseudonyms and redaction: no patient identifier may reach results/, logs or reports.

* Pseudonyms are keyed hashes (HMAC-SHA256) of the original identifier. The key is a random
  secret kept in ``private_dir`` — a plain or salted-but-public hash of a short hospital ID
  could be reversed by trying every ID, a keyed one cannot without the key.
* :class:`Redactor` replaces every known identifier (patient IDs, names, dates, accession
  numbers taken from tables and DICOM headers) inside free text such as file paths and error
  messages, because real data sets put IDs into folder names (CBIS-DDSM: ``Mass-Training_P_00001_LEFT_CC``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Iterable

# DICOM attributes that identify a patient or can be linked to one. Their values are collected
# for redaction; none of them is ever copied into an output.
IDENTIFYING_TAGS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AccessionNumber",
    "StudyID",
)

# Shorter tokens are too common to redact meaningfully (they would mangle ordinary words).
MIN_IDENTIFIER_LENGTH = 3


def load_or_create_key(path: str | Path) -> bytes:
    """Read the pseudonymisation key, creating a new random one (mode 0600) if absent."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: pseudonymisation key is too short (need >= 32 hex characters)")
    return bytes.fromhex(key)


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
            if tag == "PatientName":
                found.extend(part for part in re.split(r"[\^= ]+", text) if part)
    return found


class Redactor:
    """Replace known identifiers in text.

    ``replacements`` maps identifier → replacement (e.g. an original patient ID → its pseudonym);
    identifiers given only as a list become ``<redacted>``. Longest first, so an ID that contains
    another is replaced whole.
    """

    def __init__(self, replacements: dict[str, str] | None = None, identifiers: Iterable[str] = ()):
        table: dict[str, str] = {}
        for ident in identifiers:
            ident = str(ident).strip()
            if len(ident) >= MIN_IDENTIFIER_LENGTH:
                table.setdefault(ident, "<redacted>")
        for ident, repl in (replacements or {}).items():
            ident = str(ident).strip()
            if len(ident) >= MIN_IDENTIFIER_LENGTH:
                table[ident] = repl
        self._table = table
        if table:
            alternatives = sorted(table, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(a) for a in alternatives), re.IGNORECASE)
            self._lookup = {k.lower(): v for k, v in table.items()}
        else:
            self._pattern = None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return str(text)
        return self._pattern.sub(lambda m: self._lookup[m.group(0).lower()], str(text))

    def __len__(self) -> int:
        return len(self._table)
