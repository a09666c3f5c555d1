"""Exceptions shared by every stage.

Every error about input data names the file, the record and the reason, so a user can
find and fix it. Callers are responsible for passing an already *redacted* file name
and record label (see :mod:`dpmed.io.identifiers`): these messages end up in logs.
"""

from __future__ import annotations


class DpmedError(Exception):
    """Base class of all dpmed errors."""


class ConfigError(DpmedError):
    """The configuration is invalid or inconsistent."""


class DataError(DpmedError):
    """The input data as a whole cannot be used (an empty or undecodable table, every record
    rejected, a split too small for its cohort).

    Attributes
    ----------
    rejected: optional table of the records rejected so far (columns ``source, record, reason``),
        so a caller can still write it out when the run stops.
    """

    def __init__(self, message: str, rejected=None):
        super().__init__(message)
        self.rejected = rejected

    def __reduce__(self):
        return (type(self), (str(self), self.rejected))


class BadRecordError(DataError):
    """One input record cannot be used.

    Attributes
    ----------
    source: the file that holds the problem (redacted path, relative to the data root).
    record: a label that identifies the record without identifying the patient
        (e.g. ``"labels.csv row 17"``).
    reason: why the record was refused, in words a user can act on.
    """

    def __init__(self, source: str, record: str, reason: str):
        self.source = str(source)
        self.record = str(record)
        self.reason = str(reason)
        super().__init__(f"{self.source}: {self.record}: {self.reason}")
        self.rejected = None

    def __reduce__(self):
        # Default exception pickling replays only the message; keep the three fields so the
        # error survives a trip through a worker process.
        return (type(self), (self.source, self.record, self.reason))

    def with_context(self, source: str | None = None, record: str | None = None) -> "BadRecordError":
        """Return a copy with the source/record filled in by a caller that knows more."""
        return BadRecordError(source or self.source, record or self.record, self.reason)


class PrivacyError(DpmedError):
    """A model or setting cannot be trained with the requested privacy guarantee."""


class SiteError(DpmedError, ValueError):
    """A federated site's data cannot be used (too few records, a class missing ...).

    Messages name the site by its pseudonym (never the institution's name) and the reason.
    """


class ModelFileError(DpmedError):
    """A user-supplied model file (e.g. an encoder) does not load or does not fit; names the file."""
