"""Files and folders that a later step or run reads, written so that no reader ever sees half of one: written
under a temporary name beside the target, then renamed onto it (atomic within one file system). A kill, a
full disk or an error leaves the previous version (or nothing) and no temporary; the `OSError` names the
target. Output folders are checked before the work (`writable_folder`). Input folders are listed by `listed`,
which names what it skips.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from feclip.errors import FeclipError, note

RUST_OS_CODE = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")  # an OS error in a Rust library


class OutputError(FeclipError):
    """An output location named in the config cannot hold the job's files."""


def os_error(error: BaseException, path: Path) -> OSError | None:
    """The OS error behind `error`, naming `path` (the target, not its temporary): from `error` itself, its
    cause, or an error code in its message (safetensors raises `SafetensorError: ... Os { code: 28, ... }`);
    None if there is none."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, OSError) and candidate.errno is not None:
            return OSError(candidate.errno, candidate.strerror, str(path))
    found = RUST_OS_CODE.search(str(error))
    if found:
        code = int(found.group(1) or found.group(2))
        return OSError(code, os.strerror(code), str(path))
    return None


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; what the block writes there (a file, or a folder it creates)
    replaces `path` when the block succeeds, and is removed when it fails. An OS failure inside the block
    (also one reported by a Rust library) is raised as an `OSError` naming `path`."""
    path = Path(path)
    tmp = _temporary(path)
    _remove(tmp)
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException as error:
        _remove(tmp)
        found = os_error(error, path) if isinstance(error, Exception) else None
        if found is not None:
            raise found from error
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A new empty folder beside `path` that replaces it (a previous folder included) when the block
    succeeds; a failed or interrupted block leaves the previous folder (or none), no part of the new one."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        yield tmp


def _replace(tmp: Path, path: Path) -> None:
    """Rename `tmp` onto `path`; a folder replaces a previous folder via a rename aside."""
    if tmp.is_dir() and path.is_dir():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    """Atomic: a reader sees the old file or the new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def writable_folder(path: str | Path, key: str) -> Path:
    """`path` as an existing folder where files can be created (created when missing); else a one-line
    `OutputError` naming the config `key`: a file in the way, a folder that cannot be created, or one that
    refuses new files (permissions, read-only, immutable). Checked by creating a file, since root passes
    every permission test."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key}={str(path)!r} is a file; expected a folder (or a path that can be created)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = f"[Errno {error.errno}] {error.strerror}" if error.errno else str(error)
        what = "a file is in its way" if error.errno in (errno.ENOTDIR, errno.EEXIST) else reason
        raise OutputError(
            f"{key}={str(path)!r} cannot hold files ({what}); expected a writable folder"
        ) from None
    return path


def listed(folder: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The entries of `folder` whose suffix (any case) is one of `suffixes`, sorted. Every other entry (a
    subfolder, a notes file) is named in one note, never dropped silently; an entry with the suffix that is
    no readable file (a dangling link) is listed, for the caller to refuse or report."""
    entries = sorted(Path(folder).iterdir())
    kept = [p for p in entries if p.suffix.lower() in suffixes]
    others = [f"{p.name}/" if p.is_dir() else p.name for p in entries if p not in kept]
    if others:
        shown = ", ".join(others[:5]) + (f", ... ({len(others) - 5} more)" if len(others) > 5 else "")
        note(f"{folder}: skipped {len(others)} entries that are not {'/'.join(suffixes)} files: {shown}")
    return kept
