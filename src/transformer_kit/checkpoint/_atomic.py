"""Durable atomic file writes: temp file, fsync, rename, fsync the folder.

A file is written under a temporary name in its final folder, flushed, fsynced and closed (a
full disk often reports only at close), then renamed over the final name with `os.replace`,
and the folder is fsynced so that the rename itself survives a power cut. A crash at any
point leaves either the old file or the new one under the final name, never a half-written
one; a failure removes the temporary file and raises `CheckpointError`.

The steps are split (`prepare`, `link_prepared`, `publish`) so that the manager can write
several files and commit them together; `atomic_write` is all of them at once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "TEMP_MARK",
    "CheckpointError",
    "PreparedFile",
    "atomic_write",
    "describe_os_error",
    "discard",
    "fsync_folder",
    "link_prepared",
    "prepare",
    "publish",
    "remove_temp_files",
    "sha256_file",
]

logger = logging.getLogger(__name__)

TEMP_MARK = ".tmp."
"""Every temporary name is `<final name>.tmp.<random>`; a manager removes these on open."""

_CHUNK = 1 << 20

# What a reader should do about the errors a checkpoint write meets in practice.
_ADVICE = {
    errno.ENOSPC: "no space left on device (ENOSPC): free space or checkpoint to a larger disk",
    errno.EFBIG: (
        "file too large (EFBIG): the process file-size limit (ulimit -f, RLIMIT_FSIZE) or the "
        "filesystem's largest file size was reached"
    ),
    errno.EDQUOT: "disk quota exceeded (EDQUOT): free space or raise the quota",
    errno.EROFS: "read-only filesystem (EROFS): checkpoint to a writable folder",
    errno.EACCES: "permission denied (EACCES): checkpoint to a folder you can write",
}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, read or trusted; the message names the file."""


@dataclass(frozen=True)
class PreparedFile:
    """A written, fsynced and closed temporary file waiting to be renamed onto `final`."""

    temp: Path
    final: Path
    sha256: str
    size: int


class _HashingWriter:
    """A write-only file object that hashes and counts what passes and keeps the first OS error.

    torch wraps errors raised by `write` in its own RuntimeError, so the OS error (ENOSPC,
    EFBIG) is recorded here to be reported by name.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0
        self.os_error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            self._file.write(data)
        except OSError as error:
            self.os_error = self.os_error or error
            raise
        view = memoryview(data)
        self._hash.update(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as error:
            self.os_error = self.os_error or error
            raise

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def prepare(final: Path, write: Callable[[BinaryIO], object]) -> PreparedFile:
    """Write a temporary file next to `final` with `write(file)`, then flush, fsync and close it.

    Raises:
        CheckpointError: naming `final` and the OS error; the temporary file is removed.
    """
    folder = final.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=final.name + TEMP_MARK, dir=folder)
    except OSError as error:
        raise CheckpointError(f"could not write {final}: {describe_os_error(error)}") from error
    temp = Path(name)
    file = os.fdopen(handle, "wb")
    writer = _HashingWriter(file)
    try:
        try:
            write(writer)  # type: ignore[arg-type]
            writer.flush()
            os.fsync(file.fileno())
        finally:
            # Closing flushes again; NFS and quota errors often surface only here.
            file.close()
    except BaseException as error:
        _remove_quietly(temp)
        if not isinstance(error, Exception):
            raise
        cause = writer.os_error or _find_os_error(error)
        reason = describe_os_error(cause) if cause else f"{type(error).__name__}: {error}"
        raise CheckpointError(
            f"could not write {final}: {reason}; any previous {final.name} is untouched"
        ) from error
    return PreparedFile(temp=temp, final=final, sha256=writer.hexdigest(), size=writer.size)


def link_prepared(source: PreparedFile, final: Path) -> PreparedFile:
    """Give the content of `source` a second temporary name, for `final`, without a rewrite.

    A hard link costs no space or time. Later saves replace the final names with new files
    (never write into them), so linked names never change each other. Where the filesystem
    has no hard links the content is copied and fsynced instead.
    """
    temp = final.with_name(final.name + TEMP_MARK + secrets.token_hex(6))
    try:
        os.link(source.temp, temp)
    except OSError as error:
        logger.debug("hard link %s -> %s failed (%s); copying", source.temp, temp, error)
    else:
        return PreparedFile(temp=temp, final=final, sha256=source.sha256, size=source.size)

    def copy(file: BinaryIO) -> None:
        with open(source.temp, "rb") as original:
            shutil.copyfileobj(original, file, _CHUNK)

    copied = prepare(final, copy)
    if copied.sha256 != source.sha256:
        discard([copied])
        raise CheckpointError(f"copying {source.temp} to {final} changed its content")
    return copied


def publish(prepared: Sequence[PreparedFile]) -> None:
    """Rename each temporary file onto its final name, in order, then fsync their folders.

    Raises:
        CheckpointError: when a rename fails; the temporary files not yet renamed are removed.
    """
    for index, item in enumerate(prepared):
        try:
            os.replace(item.temp, item.final)
        except OSError as error:
            discard(prepared[index:])
            raise CheckpointError(
                f"could not rename {item.temp} to {item.final}: {describe_os_error(error)}"
            ) from error
    for folder in dict.fromkeys(item.final.parent for item in prepared):
        fsync_folder(folder)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> PreparedFile:
    """Write `path` atomically and durably with `write(file)`; returns its sha256 and size."""
    prepared = prepare(path, write)
    publish([prepared])
    return prepared


def discard(prepared: Iterable[PreparedFile]) -> None:
    """Remove temporary files that will not be published (missing ones are fine)."""
    for item in prepared:
        _remove_quietly(item.temp)


def fsync_folder(folder: Path) -> None:
    """Make renames and deletions in `folder` durable (a no-op where folders cannot be opened)."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals renames itself.
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError as error:
        # Some filesystems (certain FUSE and network mounts) do not fsync folders at all.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise CheckpointError(
                f"could not fsync the folder {folder}: {describe_os_error(error)}"
            ) from error
    finally:
        os.close(handle)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that interrupted writes left in `folder`; returns them."""
    removed = []
    for path in sorted(folder.iterdir()):
        if TEMP_MARK in path.name and path.is_file():
            _remove_quietly(path)
            removed.append(path)
    return removed


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_os_error(error: OSError) -> str:
    """Say what an OS error means for a checkpoint write, naming the errno."""
    if error.errno in _ADVICE:
        return _ADVICE[error.errno]
    if error.errno is not None:
        code = errno.errorcode.get(error.errno, str(error.errno))
        return f"{os.strerror(error.errno)} ({code})"
    return str(error)


def _find_os_error(error: BaseException) -> OSError | None:
    seen: BaseException | None = error
    for _ in range(8):  # torch nests at most a couple of levels; bound the walk anyway
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning("could not remove the temporary file %s: %s", path, error)
