"""Built-in corpora: text that every machine has without a download, plus a checked file reader.

The default corpus is the source of the running Python's standard library, read in a fixed order,
so a smoke test or a tutorial can train on real text anywhere.
    >>> text = stdlib_corpus(max_bytes=20_000)
    >>> 0 < len(text.encode("utf-8")) <= 20_000
    True
"""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from pathlib import Path

__all__ = ["read_text_file", "stdlib_corpus", "stdlib_files"]

_log = logging.getLogger(__name__)

# Directories whose files are not library source: installed packages, and the test suites
# (large, repetitive, and in some releases containing deliberately malformed files).
_EXCLUDED_DIR_NAMES = frozenset({"site-packages", "dist-packages", "test", "tests", "__pycache__"})
# Machine-generated modules: codec tables (encodings/cp*.py and friends, ~34 KB of near-identical
# lines each) and pydoc's topic dump. Left in, they dominate any contiguous split (the sorted
# 4 MB selection used to end in fifteen codec tables, so validation measured nothing).
_EXCLUDED_REL_DIRS = frozenset({"idlelib/idle_test", "lib2to3/tests", "encodings", "pydoc_data"})


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Read a whole file as UTF-8, exactly (no newline translation).

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a file.
        ValueError: If the file is not valid UTF-8; the message names the path and byte offset.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder; name a text file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"read_text_file: {str(path)!r} {what}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"read_text_file: {str(path)!r} is not valid UTF-8 (byte {err.start}: {err.reason}); "
            "convert it to UTF-8 first"
        ) from err


def stdlib_files(*, max_bytes: int = 4_000_000) -> list[Path]:
    """Return the standard-library files that `stdlib_corpus` concatenates, in corpus order.

    Args:
        max_bytes: Budget in UTF-8 bytes, counting the ``"\\n"`` added after each file.

    Raises:
        ValueError: If ``max_bytes`` is not a positive int, or smaller than the first file.
        FileNotFoundError: If the interpreter's stdlib folder does not exist.
    """
    return [path for path, _ in _select(max_bytes)]


def stdlib_corpus(*, max_bytes: int = 4_000_000) -> str:
    """Return the Python standard library's source as one string of at most ``max_bytes`` bytes.

    Files are every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` except those under
    ``site-packages``, ``dist-packages``, ``test``/``tests``, ``__pycache__``,
    ``idlelib/idle_test``, ``lib2to3/tests`` and the machine-generated ``encodings`` and
    ``pydoc_data``. They are ordered by the SHA-256 of their POSIX relative path: a fixed order
    that does not depend on the file system and that mixes packages, so the last 10% of the
    corpus (a contiguous validation split) is a file-level random sample rather than the
    alphabetically last modules. Files that are not valid UTF-8 are skipped (logged). Each file
    is followed by one ``"\\n"``; the corpus stops before the first file that would take it past
    ``max_bytes``. The result is the same on every call for a given Python installation.

    Raises:
        ValueError: If ``max_bytes`` is not a positive int, or smaller than the first file.
        FileNotFoundError: If the interpreter's stdlib folder does not exist.

    Example:
        >>> stdlib_corpus(max_bytes=100_000) == stdlib_corpus(max_bytes=100_000)
        True
    """
    return "".join(text + "\n" for _, text in _select(max_bytes))


def _select(max_bytes: int) -> list[tuple[Path, str]]:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"stdlib_corpus: max_bytes must be an int >= 1, got {max_bytes!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"stdlib_corpus: the standard library folder {str(root)!r} does not exist (this "
            "Python installation ships without its source); pass your own text instead"
        )
    selected: list[tuple[Path, str]] = []
    used = 0
    for rel in _candidate_paths(root):
        path = root / rel
        if not path.is_file():  # a dangling symlink
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            _log.info("stdlib_corpus: skipping %s, not valid UTF-8 (%s)", path, err.reason)
            continue
        size = len(raw) + 1  # the file plus its "\n" separator
        if used + size > max_bytes:
            if not selected:  # an empty corpus would fail later, far from its cause
                raise ValueError(
                    f"stdlib_corpus: max_bytes={max_bytes} is smaller than the first file "
                    f"({rel}, {size} bytes with its newline); pass at least {size}"
                )
            break
        selected.append((path, text))
        used += size
    return selected


def _candidate_paths(root: Path) -> list[str]:
    rel_paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        # Prune in place so os.walk never descends into excluded folders.
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _EXCLUDED_DIR_NAMES
            and (d if rel_dir == "." else f"{rel_dir}/{d}") not in _EXCLUDED_REL_DIRS
        ]
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        rel_paths.extend(prefix + name for name in filenames if name.endswith(".py"))
    return sorted(rel_paths, key=_path_order)


def _path_order(rel: str) -> str:
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()
