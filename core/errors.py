"""Domain errors of the service layer.

Every error a person can cause or must be told about derives from ``RollbackError``;
its ``str()`` is a sentence fit to show in Slack or on a terminal. The tree::

    RollbackError
    ├── ConfigError              a setting is missing or malformed
    ├── InvalidName              a model or backup name with '/', '\\', '..', NUL, absolute, escaping symlink
    ├── UnknownModel             no such model under MODELS_DIR
    ├── UnknownBackup            no such backup of that model
    ├── BackupCorrupt            a backup's files do not load, its metadata is bad, or a file is not a plain file
    ├── RightsNotKept            a model file cannot be written with the owner, group and mode it must keep
    ├── PreflightFailed          a target failed pre-flight checks (nothing was changed)
    ├── NotAuthorized            the user may not do this
    │   └── RateLimited          …not again so soon (heavy commands per person per minute)
    ├── InvalidTransition        the incident is not in a state that allows this step
    ├── Conflict                 another open incident / a concurrent action got there first
    ├── VerificationFailed       the restored model failed verification
    ├── UnknownIncident          no such incident
    ├── DatabaseUnavailable      PostgreSQL does not answer (or a step's lock/statement timeout)
    │   └── LostLock (core.fencing)  this process no longer holds a rollback's lock
    └── FilesMismatch            production files differ from their production row (resume refused)
"""

from __future__ import annotations


class RollbackError(Exception):
    """Base of every domain error; the message is meant for people."""


class ConfigError(RollbackError):
    pass


class InvalidName(RollbackError):
    pass


class UnknownModel(RollbackError):
    pass


class UnknownBackup(RollbackError):
    pass


class BackupCorrupt(RollbackError):
    pass


class RightsNotKept(RollbackError):
    pass


class PreflightFailed(RollbackError):
    pass


class NotAuthorized(RollbackError):
    pass


class RateLimited(NotAuthorized):
    pass


class InvalidTransition(RollbackError):
    pass


class Conflict(RollbackError):
    pass


class VerificationFailed(RollbackError):
    pass


class UnknownIncident(RollbackError):
    pass


class DatabaseUnavailable(RollbackError):
    """``since``: when this process first saw the database fail (since it last answered); ``target``: host:port/db
    (never the password); ``reason``: the driver's first line."""

    def __init__(self, message: str, *, since: object = None, target: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.since = since
        self.target = target
        self.reason = reason


class FilesMismatch(RollbackError):
    """``/rollback resume`` refused: some model's files are not its production row's. ``mismatches`` lists
    them (core.integrity.FileMismatch); two different approvers may override."""

    def __init__(self, message: str, mismatches: list | None = None) -> None:
        super().__init__(message)
        self.mismatches = list(mismatches or [])


def clean_text(text: str | None, limit: int = 2000) -> str:
    """Free text from a person, safe to store: NUL and other control characters (but newlines and tabs)
    removed, surrounding space stripped, cut to ``limit`` characters."""
    if not text:
        return ""
    kept = "".join(ch for ch in str(text) if ch in "\n\t" or (ord(ch) >= 32 and ord(ch) != 127))
    return kept.strip()[:limit]
