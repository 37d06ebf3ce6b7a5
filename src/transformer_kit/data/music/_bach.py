"""The Bach chorales from music21's corpus, parsed once into note events and cached as JSON."""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from transformer_kit.data.music._convert import _music21, _parts_to_piece, _score_parts
from transformer_kit.data.music._split import _SPLITS, _digest, _split_indices
from transformer_kit.tokenization.events import NoteEvent, Piece

_log = logging.getLogger(__name__)

_CACHE_FORMAT = "transformer_kit.bach_chorales"
# Bump whenever parsing, splitting or the file layout changes: other versions are rebuilt.
_CACHE_VERSION = 3  # 3: events keep their fermatas
_COLUMNS = ["pitch", "voice", "onset", "duration", "bar", "key", "fermata"]
_VOICES = 4
_FRACTIONS = (0.9, 0.05, 0.05)


def bach_chorales(
    cache_dir: str | os.PathLike[str] | None = None, *, refresh: bool = False
) -> dict[str, list[Piece]]:
    """Return the four-part Bach chorales as note events, split 90/5/5 into train/val/test.

    The first call parses music21's Bach corpus (one to two minutes) and writes
    ``bach_chorales-v3.json`` to ``cache_dir``; later calls read that file (a fraction of a
    second) without importing music21. Voices are 1 soprano, 2 alto, 3 tenor, 4 bass. The split
    is `split_pieces` with its defaults, so chorales that share a melody (`melody_groups`) and
    duplicate files share a split. `bach_chorales_report` names each piece and lists the files
    that were left out and why.

    Args:
        cache_dir: Folder for the cache; default ``$TRANSFORMER_KIT_CACHE``, else
            ``$XDG_CACHE_HOME/transformer_kit``, else ``~/.cache/transformer_kit``.
        refresh: Parse the corpus again even if a valid cache exists.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, pieces in corpus file order.

    Raises:
        ValueError: If ``cache_dir`` or ``refresh`` has the wrong type.
        ImportError: If the cache must be built and music21 is not installed.

    Example:
        >>> splits = bach_chorales()  # doctest: +SKIP
        >>> {name: len(pieces) for name, pieces in splits.items()}  # doctest: +SKIP
        {'train': 333, 'val': 18, 'test': 17}
    """
    cache = _load_or_build(cache_dir, refresh, "bach_chorales")
    pieces = cache["events"]
    return {name: [pieces[i] for i in indices] for name, indices in cache["splits"].items()}


def bach_chorales_report(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Describe the cached corpus: what was parsed, what was left out and why, and the split.

    Builds the cache first if needed, like `bach_chorales`.

    Returns:
        A dict with ``cache_file``; ``cache_version``; ``music21_version`` and
        ``build_seconds`` of the build; ``files`` (corpus files seen); ``parsed`` (chorales
        kept); ``skipped`` and ``failed`` (lists of ``{"file", "reason"}``: files that parsed
        but are not four-part chorales, and files that did not parse); ``splits`` (piece names
        per split, in the order `bach_chorales` returns the pieces); ``groups`` (names of the
        pieces in each melody group of two or more); ``duplicates`` (names of pieces with
        identical events).
    """
    cache = _load_or_build(cache_dir, False, "bach_chorales_report")
    names = [entry["name"] for entry in cache["pieces"]]

    def named(index_lists: list[list[int]]) -> list[list[str]]:
        return [[names[i] for i in indices] for indices in index_lists]

    return {
        "cache_file": str(cache["path"]),
        "cache_version": _CACHE_VERSION,
        "music21_version": cache["music21_version"],
        "build_seconds": cache["build_seconds"],
        "files": cache["files"],
        "parsed": len(names),
        "skipped": cache["skipped"],
        "failed": cache["failed"],
        "splits": {split: [names[i] for i in idx] for split, idx in cache["splits"].items()},
        "groups": named(cache["groups"]),
        "duplicates": named(cache["duplicates"]),
    }


def _load_or_build(
    cache_dir: str | os.PathLike[str] | None, refresh: bool, caller: str
) -> dict[str, Any]:
    if not isinstance(refresh, bool):
        raise ValueError(f"{caller}: refresh must be a bool, got {refresh!r}")
    folder = _cache_folder(cache_dir, caller)
    path = folder / f"bach_chorales-v{_CACHE_VERSION}.json"
    cache = None if refresh else _read_cache(path)
    if cache is None:
        cache = _build(_music21(caller))
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, {k: v for k, v in cache.items() if k != "events"})
        _log.info("%s: cached %d chorales in %s", caller, len(cache["pieces"]), path)
    cache["path"] = path
    return cache


def _cache_folder(cache_dir: str | os.PathLike[str] | None, caller: str) -> Path:
    if cache_dir is not None:
        if not isinstance(cache_dir, str | os.PathLike) or not os.fspath(cache_dir):
            raise ValueError(
                f"{caller}: cache_dir must be a folder path (str or os.PathLike) or None, "
                f"got {cache_dir!r}"
            )
        return Path(cache_dir)
    if os.environ.get("TRANSFORMER_KIT_CACHE"):
        return Path(os.environ["TRANSFORMER_KIT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "transformer_kit"
    return Path.home() / ".cache" / "transformer_kit"


def _read_cache(path: Path) -> dict[str, Any] | None:
    """Return the cache with its events rebuilt, or None (with a warning) if it is unusable."""
    if not path.exists():
        return None
    # Loading makes ~600,000 objects (JSON lists and numbers, then events) that form no cycles,
    # yet trigger the cyclic collector hundreds of times; pausing it cuts the load time by
    # about 3x (measured on the 368 chorales).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _parse_cache(path)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        _log.warning("bach_chorales: cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    finally:
        if collecting:
            gc.enable()


def _parse_cache(path: Path) -> dict[str, Any] | None:
    cache = json.loads(path.read_text(encoding="utf-8"))
    found = (cache.get("format"), cache.get("version"))
    if found != (_CACHE_FORMAT, _CACHE_VERSION):
        _log.warning(
            "bach_chorales: cache %s holds %r version %r, expected %r version %d; rebuilding it",
            path,
            *found,
            _CACHE_FORMAT,
            _CACHE_VERSION,
        )
        return None
    if cache["columns"] != _COLUMNS:
        raise ValueError(f"columns are {cache['columns']!r}, expected {_COLUMNS!r}")
    # NoteEvent checks every field, so a damaged row fails here, not during training.
    cache["events"] = [[NoteEvent(*row) for row in p["events"]] for p in cache["pieces"]]
    if not all(isinstance(p["name"], str) for p in cache["pieces"]):
        raise ValueError("a piece name is not a string")
    count = len(cache["events"])
    if sorted(i for split in _SPLITS for i in cache["splits"][split]) != list(range(count)):
        raise ValueError("its splits do not cover every piece exactly once")
    listed = [i for group in cache["groups"] + cache["duplicates"] for i in group]
    if not all(isinstance(i, int) and 0 <= i < count for i in listed):
        raise ValueError("its groups name pieces that do not exist")
    return cache


def _build(m21: ModuleType) -> dict[str, Any]:
    start = time.perf_counter()
    root = Path(m21.common.getCorpusFilePath())
    paths = sorted(m21.corpus.getComposer("bach"), key=lambda p: _relative(p, root))
    names: list[str] = []
    events: list[Piece] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    for count, path in enumerate(paths, start=1):
        name = _relative(path, root)
        if count % 50 == 0:
            _log.info("bach_chorales: parsing file %d of %d", count, len(paths))
        if path.suffix == ".rntxt":
            skipped.append({"file": name, "reason": "a Roman-numeral analysis, not a score"})
            continue
        try:
            parts = _score_parts(m21.converter.parse(path, forceSource=True), m21)
        except Exception as err:  # music21 raises many unrelated types for a malformed file
            reason = f"{type(err).__name__}: {err}"
            _log.warning("bach_chorales: failed to parse %s: %s", name, reason)
            failed.append({"file": name, "reason": reason})
            continue
        if len(parts) != _VOICES:
            reason = f"{len(parts)} parts with notes, not 4 ({', '.join(map(_part_name, parts))})"
            _log.warning("bach_chorales: skipping %s: %s", name, reason)
            skipped.append({"file": name, "reason": reason})
            continue
        names.append(name)
        events.append(_parts_to_piece(parts, m21, source=name))
    splits, groups = _split_indices(events, fractions=_FRACTIONS, seed=0, group_key=None)
    duplicates: dict[str, list[int]] = {}
    for i, piece in enumerate(events):
        duplicates.setdefault(_digest(piece), []).append(i)
    seconds = time.perf_counter() - start
    _log.info(
        "bach_chorales: parsed %d four-part chorales from %d files in %.0f s "
        "(%d skipped, %d failed)",
        len(events),
        len(paths),
        seconds,
        len(skipped),
        len(failed),
    )
    return {
        "format": _CACHE_FORMAT,
        "version": _CACHE_VERSION,
        "music21_version": m21.__version__,
        "build_seconds": round(seconds, 1),
        "files": len(paths),
        "skipped": skipped,
        "failed": failed,
        "splits": splits,
        "groups": [group for group in groups if len(group) > 1],
        "duplicates": [group for group in duplicates.values() if len(group) > 1],
        "columns": _COLUMNS,
        "pieces": [
            {"name": name, "events": [[getattr(e, c) for c in _COLUMNS] for e in piece]}
            for name, piece in zip(names, events, strict=True)
        ],
        "events": events,
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:  # a corpus file registered from outside music21's own folder
        return Path(path).name


def _part_name(part: Any) -> str:
    return str(part.partName or part.id)


def _write_atomic(path: Path, content: dict[str, Any]) -> None:
    """Write JSON to a temp file in the same folder, then rename it over ``path``.

    Readers see the old file or the new one, never half of one, even when two processes build
    the cache at once.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(content, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as readable as its folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
