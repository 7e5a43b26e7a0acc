"""The file store: `<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`, written atomically."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from storage.errors import DiskFullError, StorageError
from storage.uids import validate_uid


@dataclass(frozen=True)
class StoredFile:
    """A file that is complete and fsynced on disk under its final name."""

    relative: str
    size: int


QUARANTINE = ".orphans"  # files found without an index row at start-up


class FileStore:
    """Keeps DICOM files under `root`, one folder per study and series.

    Every write goes to a temporary file in the target folder (`write_temp`), is fsynced, then
    linked or renamed into place and the folder fsynced (`publish`, `commit_temp`), so a file
    under its final name is always complete. The first file this process places in a folder
    also fsyncs every folder above it up to the root, so that the names of a new study's and
    series' folders (made by this process or, moments before, by another) are as durable as
    the file. Those fsyncs are made by whoever calls `publish` (on the receive path, a thread
    beside the index's transaction), not by `write_temp`.
    """

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self._folders: set[str] = set()  # series folders known to exist (saves a mkdir each)
        # folder -> the folders above it whose entries may not be on disk yet (see publish)
        self._unsynced: dict[str, tuple[str, ...]] = {}
        self._names = itertools.count()

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The path of an instance relative to the root; every UID is validated first."""
        parts = (
            validate_uid(study_uid, what="StudyInstanceUID"),
            validate_uid(series_uid, what="SeriesInstanceUID"),
            validate_uid(sop_uid, what="SOPInstanceUID") + ".dcm",
        )
        return "/".join(parts)

    def path_of(self, relative: str) -> Path:
        return self.root / relative

    def check_space(self, incoming: int) -> None:
        """Raise DiskFullError unless `incoming` bytes fit above the free-space reserve."""
        try:
            free = shutil.disk_usage(self.root).free
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.root).free
        if free - incoming < self.min_free_bytes:
            raise DiskFullError(
                f"file store {self.root} has {free} bytes free, reserve is {self.min_free_bytes}"
            )

    def write_temp(self, relative: str, chunks: list[bytes]) -> str:
        """Write `chunks` to a temporary file beside the final path; return its path. Not yet
        fsynced: `publish` does that before it names the file."""
        size = sum(len(c) for c in chunks)
        self.check_space(size)
        folder = os.path.join(self.root, os.path.dirname(relative))
        try:
            if folder not in self._folders:
                self._make_folder(folder)
                self._folders.add(folder)
            try:
                tmp, fd = self._create_temp(folder)
            except FileNotFoundError:  # the folder was removed since: make it again
                self._make_folder(folder)
                tmp, fd = self._create_temp(folder)
        except OSError as exc:
            raise _write_error(relative, exc) from exc
        try:
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard(tmp)
            raise _write_error(relative, exc) from exc
        return tmp

    def _make_folder(self, folder: str) -> None:
        """Make `folder` and its missing parents; their names are synced by `publish`."""
        made = _make_folders(folder)
        above, path = [], os.path.dirname(folder)
        root = os.fspath(self.root)
        while path.startswith(root) and path != os.path.dirname(path):
            above.append(path)
            if path == root:
                break
            path = os.path.dirname(path)
        self._unsynced[folder] = tuple(dict.fromkeys([*above, *made]))

    def _sync_folders_above(self, folder: str) -> None:
        """fsync the folders above `folder` that `write_temp` left to sync, if any."""
        above = self._unsynced.get(folder)
        if above:
            for path in above:
                _fsync_dir(path)
            self._unsynced.pop(folder, None)

    def _create_temp(self, folder: str) -> tuple[str, int]:
        """A new file in `folder`, named for this process and a counter (never reused within
        it; a name left by an earlier process is skipped)."""
        while True:
            tmp = os.path.join(folder, f".incoming-{os.getpid()}-{next(self._names)}.tmp")
            try:
                return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                    0o600)
            except FileExistsError:
                continue

    def commit_temp(self, tmp: str, relative: str) -> StoredFile:
        """Move a temporary file to its final name (replacing any file there) durably."""
        final = self.path_of(relative)
        try:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            self._sync_folders_above(str(final.parent))
        except OSError as exc:
            self.discard(tmp)
            raise StorageError(f"cannot move {relative} into place: {exc}") from exc
        return StoredFile(relative=relative, size=final.stat().st_size)

    def place_new(self, tmp: str, relative: str) -> StoredFile | None:
        """Give a temporary file its final name only if no file has it (a hard link never
        replaces), durably; None when the name is taken. The temporary name is removed."""
        final = os.path.join(self.root, relative)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return None
        except OSError as exc:
            self.discard(tmp)
            raise StorageError(f"cannot move {relative} into place: {exc}") from exc
        os.unlink(tmp)
        folder = os.path.dirname(final)
        try:
            _fsync_dir(folder)
            self._sync_folders_above(folder)
        except OSError as exc:
            raise StorageError(f"cannot sync the folders of {relative}: {exc}") from exc
        return StoredFile(relative=relative, size=os.stat(final).st_size)

    def publish(self, tmp: str, relative: str) -> StoredFile | None:
        """fsync a file from `write_temp`, then `place_new` it. When the name is taken,
        None, and the (now synced) temporary file is left for the caller."""
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard(tmp)
            raise _write_error(relative, exc) from exc
        return self.place_new(tmp, relative)

    @staticmethod
    def discard(tmp: str) -> None:
        """Remove a temporary file from `write_temp`, if it is still there."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass

    def sweep(self, modified_since: float | None) -> tuple[int, list[str]]:
        """For start-up, before anything receives: remove the temporary files of writes a
        crash interrupted (never answered, so the sender resends them), and list the
        instances' files modified at or after `modified_since` (a POSIX time; None: none).
        Returns (temporary files removed, relative paths of those files)."""
        removed, recent = 0, []
        for folder, dirs, names in os.walk(self.root):
            if folder == str(self.root):
                dirs[:] = [d for d in dirs if d != QUARANTINE]
            for name in names:
                path = os.path.join(folder, name)
                if name.startswith(".incoming-") and name.endswith(".tmp"):
                    self.discard(path)
                    removed += 1
                elif (modified_since is not None and name.endswith(".dcm")
                      and os.stat(path).st_mtime >= modified_since):
                    recent.append(os.path.relpath(path, self.root))
        return removed, recent

    def quarantine(self, relative: str) -> None:
        """Move a file out of the store's tree into its QUARANTINE folder (same relative
        path), to be looked at rather than lost."""
        target = self.root / QUARANTINE / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path_of(relative), target)

    def exists(self, relative: str) -> bool:
        return self.path_of(relative).is_file()

    def remove(self, relative: str) -> None:
        self.path_of(relative).unlink(missing_ok=True)


def _write_error(relative: str, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left writing {relative}")
    return StorageError(f"cannot write {relative}: {exc}")


def _make_folders(folder: str) -> list[str]:
    """Make `folder` and whichever of its parents are missing; return the parent of each
    one made (deepest first), whose entry must be fsynced before a file in it counts as
    stored: a new study or series folder's name must survive a crash as its files do."""
    missing = []
    path = folder
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    changed = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue  # made meanwhile by another process
        changed.append(os.path.dirname(path) or ".")
    return changed[::-1]


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
