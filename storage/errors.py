"""Exceptions of the `storage` package."""


class StorageError(Exception):
    """Base of every error raised by `storage`."""


class InvalidUIDError(StorageError, ValueError):
    """A UID that is not a valid DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters."""


class DiskFullError(StorageError):
    """The file store is out of space, or below its configured free-space reserve."""


class DatabaseError(StorageError):
    """The database refused or failed a write; nothing of the operation was kept."""


class DatabaseMissingError(StorageError):
    """A database a read-only command needs is not there, cannot be opened, or is not at the
    newest schema; the message names it and what to do."""
