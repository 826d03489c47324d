"""The content a serving benchmark requests: generated files or a user's own tree.

A generated set has two kinds of objects, both random bytes (incompressible, and no two
files share pages): *segments* (many small files, like DASH media segments) and
*renditions* (a few large files served by byte ranges, like ``SegmentBase`` MP4s). A
stamp file beside the content root records the spec, so a work directory is reused when
it already holds the same set. A user's tree (``--content-dir``) is classified by size
instead: files under :data:`RENDITION_MIN_BYTES` are segments, the rest renditions.

The page-cache dropper evicts a file set's cached pages with
``posix_fadvise(POSIX_FADV_DONTNEED)`` every ``interval`` seconds, from a thread, so that
requests for those files keep reading the disk while the benchmark runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

MiB = 1024 * 1024
RENDITION_MIN_BYTES = 16 * MiB
STAMP_SUFFIX = ".oca-bench.json"  # beside the content root, so it is not served


@dataclass(frozen=True)
class ContentSpec:
    segment_count: int
    segment_bytes: int
    rendition_count: int
    rendition_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.segment_count * self.segment_bytes + self.rendition_count * self.rendition_bytes


FULL_SPEC = ContentSpec(200, 2 * MiB, 8, 64 * MiB)
SMALL_SPEC = ContentSpec(24, 256 * 1024, 2, 4 * MiB)


@dataclass(frozen=True)
class ContentFile:
    url_path: str  # percent-encoded, as requested
    size: int
    rel: str  # path relative to the content root, as on disk


@dataclass(frozen=True)
class ContentSet:
    root: Path
    segments: tuple[ContentFile, ...]
    renditions: tuple[ContentFile, ...]
    generated: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in (*self.segments, *self.renditions))


def _file(rel: str, size: int) -> ContentFile:
    return ContentFile("/" + urllib.parse.quote(rel), size, rel)


def spec_files(spec: ContentSpec) -> tuple[list[ContentFile], list[ContentFile]]:
    segments = [
        _file(f"segments/seg-{i:05d}.m4s", spec.segment_bytes) for i in range(spec.segment_count)
    ]
    renditions = [
        _file(f"renditions/rend-{i:03d}.mp4", spec.rendition_bytes)
        for i in range(spec.rendition_count)
    ]
    return segments, renditions


def generate(root: Path, spec: ContentSpec, log: Callable[[str], None] = print) -> ContentSet:
    """Write ``spec``'s random files under ``root`` unless the same set is already there."""
    segments, renditions = spec_files(spec)
    stamp = root.with_name(root.name + STAMP_SUFFIX)
    wanted = orjson.dumps(asdict(spec))
    if _stamp_matches(stamp, wanted) and all(
        _has_size(root / f.rel, f.size) for f in (*segments, *renditions)
    ):
        return ContentSet(root, tuple(segments), tuple(renditions), True)
    log(f"generating {spec.total_bytes / MiB:.0f} MiB of content in {root}")
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        stamp.unlink()
    for f in (*segments, *renditions):
        _write_random(root / f.rel, f.size)
    stamp.write_bytes(wanted)
    return ContentSet(root, tuple(segments), tuple(renditions), True)


def _stamp_matches(stamp: Path, wanted: bytes) -> bool:
    try:
        return stamp.read_bytes() == wanted
    except OSError:
        return False


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, 4 * MiB)
            fh.write(os.urandom(n))
            left -= n
    os.replace(tmp, path)


def scan(root: Path) -> ContentSet:
    """Classify a user's tree: regular files by size, symlinks and dotfiles skipped."""
    segments: list[ContentFile] = []
    renditions: list[ContentFile] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(directory, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            size = os.path.getsize(full)
            if size == 0:
                continue
            f = _file(os.path.relpath(full, root).replace(os.sep, "/"), size)
            (renditions if size >= RENDITION_MIN_BYTES else segments).append(f)
    return ContentSet(root, tuple(segments), tuple(renditions), False)


def write_list(path: Path, files: Iterable[ContentFile]) -> str:
    """Write the ``url-path<TAB>size`` list the Lua scripts read; returns its path."""
    path.write_text("".join(f"{f.url_path}\t{f.size}\n" for f in files))
    return str(path)


def warm(paths: Iterable[str], budget_bytes: int) -> int:
    """Read files into the page cache up to ``budget_bytes``; returns bytes read."""
    done = 0
    for p in paths:
        try:
            size = os.path.getsize(p)
            if done + size > budget_bytes:
                break
            with open(p, "rb", buffering=0) as fh:
                while fh.read(4 * MiB):
                    pass
            done += size
        except OSError:
            continue
    return done


def drop_cached(paths: Iterable[str]) -> int:
    """Evict the files' pages from the page cache; returns how many files were dropped."""
    n = 0
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return n


class PageCacheDropper:
    """Re-drop a file set's pages every ``interval`` seconds until stopped."""

    def __init__(self, paths: Sequence[str], interval: float = 0.1) -> None:
        self.paths = list(paths)
        self.interval = interval
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="page-cache-dropper", daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                drop_cached(self.paths)
                self.rounds += 1
                self._stop.wait(self.interval)
        except BaseException as exc:  # kept for the caller; a thread cannot raise to it
            self.error = exc

    def __enter__(self) -> PageCacheDropper:
        drop_cached(self.paths)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
