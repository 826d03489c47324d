"""The catalog: every title's objects with size and sha256, and how to build it.

Theory of operation
-------------------
A *title* is one DASH package: an MPD and every object it references (initialization
and media segments, index segments, subtitles, whole-file renditions). Its *id* is the
name of the directory holding the MPD (``tos``), its *prefix* that directory's URL path
with a trailing slash (``/titles/tos/``). Every object of a title lies under its prefix,
because one URL token covers one prefix; so the catalog refuses an object outside its
title's prefix, and two titles whose prefixes nest (a token for the outer one would
open the inner one).

:class:`Catalog` answers the two questions the service asks per request in O(1): which
object a path is (:meth:`Catalog.lookup`, a dict from path) and which title a path
belongs to (:meth:`Catalog.title_of`, the path's directories looked up in a dict of
prefixes, so its cost is the path's depth, not the catalog's size). ``version`` counts
changes, so derived indexes know when to rebuild.

The catalog is stored as JSON (schema ``oca.catalog``, version 1)::

    {"schema": "oca.catalog", "version": 1,
     "titles": [{"id": "tos", "prefix": "/titles/tos/", "mpd": "/titles/tos/manifest.mpd",
                 "origins": ["http://origin:8000"], "added_at": 1795000000.0,
                 "release_at": 1795086400.0,        # optional
                 "objects": [{"path": "...", "size": 123, "sha256": "...", "kind": "media"}]}]}

and written atomically (temporary file, fsync, rename, fsync of the directory), so a
crash leaves the old catalog or the new one, never a torn file. Loading validates every
field and names the first bad one (``titles[3].objects[17].sha256: ...``).

Builders enumerate a title's objects with :func:`steering.mpd.parse_mpd` and hash every
file, streaming: :func:`build_title_from_dir` from a packager's output tree on disk,
:func:`build_title_from_url` from an origin over HTTP with bounded concurrency.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypedDict
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import orjson

from steering.files import write_atomic
from steering.mpd import MpdError, MpdInfo, origin_of, parse_mpd

__all__ = [
    "CATALOG_SCHEMA",
    "CATALOG_VERSION",
    "Catalog",
    "CatalogError",
    "CatalogObject",
    "ObjectKind",
    "Title",
    "build_title_from_dir",
    "build_title_from_url",
    "build_titles_from_dir",
    "catalog_totals",
    "find_mpds",
    "normalize_origin",
    "title_id_and_prefix",
]

CATALOG_SCHEMA = "oca.catalog"
CATALOG_VERSION = 1

ObjectKind = Literal["mpd", "init", "media", "subtitle", "index", "file"]
_KINDS: frozenset[str] = frozenset(("mpd", "init", "media", "subtitle", "index", "file"))
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TITLE_ID_RE = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_CHUNK = 1 << 20
_DEFAULT_CONCURRENCY = 8
_MAX_MPD_BYTES = 16 * 1024 * 1024


class CatalogError(ValueError):
    """A title, object or catalog file is invalid; ``where`` names the field or file."""

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        self.detail = detail
        super().__init__(f"{where}: {detail}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class CatalogObject:
    """One file of a title."""

    path: str  # absolute URL path, decoded
    size: int
    sha256: str  # lowercase hex
    kind: ObjectKind

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise CatalogError("path", f"{self.path!r} must start with '/'")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise CatalogError(self.path, f"size {self.size!r} must be a non-negative int")
        if not _SHA256_RE.fullmatch(self.sha256):
            raise CatalogError(self.path, f"sha256 {self.sha256!r} is not 64 lowercase hex")
        if self.kind not in _KINDS:
            raise CatalogError(self.path, f"kind {self.kind!r} is not one of {sorted(_KINDS)}")


@dataclass(frozen=True, slots=True)
class Title:
    """One DASH package: its MPD and every object it references."""

    id: str
    prefix: str
    mpd_path: str
    objects: tuple[CatalogObject, ...]  # sorted by path, includes the MPD itself
    origins: tuple[str, ...]  # origin base URLs; an object's URL is origin + path
    added_at: float
    release_at: float | None = None
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _TITLE_ID_RE.fullmatch(self.id):
            raise CatalogError("id", f"{self.id!r} must be 1-128 characters of [A-Za-z0-9._~-]")
        where = f"title {self.id}"
        if not (self.prefix.startswith("/") and self.prefix.endswith("/")):
            raise CatalogError(f"{where}: prefix", f"{self.prefix!r} must start and end with '/'")
        if not self.mpd_path.startswith(self.prefix):
            raise CatalogError(f"{where}: mpd", f"{self.mpd_path} is not under {self.prefix}")
        size = 0
        previous = ""
        has_mpd = False
        for obj in self.objects:
            if not obj.path.startswith(self.prefix):
                raise CatalogError(
                    f"{where}: {obj.path}", f"lies outside the title's prefix {self.prefix}"
                )
            if obj.path <= previous:
                raise CatalogError(
                    f"{where}: {obj.path}", "objects must be sorted by path without repeats"
                )
            previous = obj.path
            has_mpd = has_mpd or (obj.path == self.mpd_path and obj.kind == "mpd")
            size += obj.size
        if not has_mpd:
            raise CatalogError(f"{where}: mpd", f"{self.mpd_path} is not among its mpd objects")
        for origin in self.origins:
            if urlsplit(origin).scheme not in ("http", "https"):
                raise CatalogError(f"{where}: origins", f"{origin!r} is not an http(s) URL")
        for name, value in (("added_at", self.added_at), ("release_at", self.release_at)):
            if value is not None and not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                raise CatalogError(f"{where}: {name}", f"{value!r} is not a finite number")
        object.__setattr__(self, "_size", size)

    @property
    def size(self) -> int:
        """Total bytes of all its objects."""
        return self._size


def _ancestors(path: str) -> Iterator[str]:
    """The directories above ``path``, deepest first: ``/a/b/c`` -> ``/a/b/``, ``/a/``, ``/``."""
    end = path.rfind("/", 0, len(path) - 1 if path.endswith("/") else len(path))
    while end >= 0:
        yield path[: end + 1]
        end = path.rfind("/", 0, end)


class Catalog:
    """Titles by id, with O(1) lookup of objects and titles by path."""

    __slots__ = ("_inner", "_objects", "_prefixes", "_titles", "_version")

    def __init__(self, titles: Iterable[Title] = ()) -> None:
        self._titles: dict[str, Title] = {}
        self._objects: dict[str, tuple[Title, CatalogObject]] = {}
        self._prefixes: dict[str, str] = {}  # prefix -> title id
        self._inner: dict[str, set[str]] = {}  # directory -> ids of titles strictly below
        self._version = 0
        for title in titles:
            self.add(title)
        self._version = 0

    @property
    def titles(self) -> Mapping[str, Title]:
        return MappingProxyType(self._titles)

    @property
    def version(self) -> int:
        """Increments on every change."""
        return self._version

    def __len__(self) -> int:
        return len(self._titles)

    def get(self, title_id: str) -> Title | None:
        return self._titles.get(title_id)

    def lookup(self, path: str) -> tuple[Title, CatalogObject] | None:
        """The title and object at URL path ``path``."""
        return self._objects.get(path)

    def title_of(self, path: str) -> Title | None:
        """The title whose prefix contains ``path`` (an object or not)."""
        found = self._objects.get(path)
        if found is not None:
            return found[0]
        candidates = (path,) if path.endswith("/") else ()
        for directory in (*candidates, *_ancestors(path)):
            title_id = self._prefixes.get(directory)
            if title_id is not None:
                return self._titles[title_id]
        return None

    def add(self, title: Title) -> None:
        """Add ``title``, replacing one with the same id; CatalogError if its prefix
        nests with another title's."""
        owner = self._prefixes.get(title.prefix)
        if owner is not None and owner != title.id:
            raise CatalogError(
                f"title {title.id}", f"prefix {title.prefix} is already title {owner}'s"
            )
        for directory in _ancestors(title.prefix):
            owner = self._prefixes.get(directory)
            if owner is not None and owner != title.id:
                raise CatalogError(
                    f"title {title.id}",
                    f"prefix {title.prefix} lies inside title {owner}'s prefix {directory}",
                )
        inside = self._inner.get(title.prefix, set()) - {title.id}
        if inside:
            other = sorted(inside)[0]
            raise CatalogError(
                f"title {title.id}",
                f"prefix {title.prefix} contains title {other}'s prefix "
                f"{self._titles[other].prefix}",
            )
        if title.id in self._titles:
            self._unindex(self._titles[title.id])
        self._titles[title.id] = title
        self._prefixes[title.prefix] = title.id
        for directory in _ancestors(title.prefix):
            self._inner.setdefault(directory, set()).add(title.id)
        for obj in title.objects:
            self._objects[obj.path] = (title, obj)
        self._version += 1

    def remove(self, title_id: str) -> None:
        """Remove a title; KeyError if there is none with that id."""
        title = self._titles.pop(title_id)
        self._unindex(title)
        self._version += 1

    def _unindex(self, title: Title) -> None:
        self._titles.pop(title.id, None)
        self._prefixes.pop(title.prefix, None)
        for directory in _ancestors(title.prefix):
            below = self._inner.get(directory)
            if below is not None:
                below.discard(title.id)
                if not below:
                    del self._inner[directory]
        for obj in title.objects:
            self._objects.pop(obj.path, None)

    # ---------------------------------------------------------------- JSON

    def to_json(self) -> bytes:
        titles = [_title_json(self._titles[key]) for key in sorted(self._titles)]
        return orjson.dumps(
            {"schema": CATALOG_SCHEMA, "version": CATALOG_VERSION, "titles": titles}
        )

    @classmethod
    def from_json(cls, data: bytes) -> Catalog:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CatalogError("catalog", f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise CatalogError("catalog", "must be a JSON object")
        if doc.get("schema") != CATALOG_SCHEMA:
            raise CatalogError("schema", f"{doc.get('schema')!r} is not {CATALOG_SCHEMA!r}")
        if doc.get("version") != CATALOG_VERSION:
            raise CatalogError("version", f"{doc.get('version')!r} is not {CATALOG_VERSION}")
        extra = set(doc) - {"schema", "version", "titles"}
        if extra:
            raise CatalogError(sorted(extra)[0], "unknown key")
        titles = doc.get("titles")
        if not isinstance(titles, list):
            raise CatalogError("titles", "must be a list")
        catalog = cls()
        for i, item in enumerate(titles):
            title = _title_from_json(item, f"titles[{i}]")
            if title.id in catalog._titles:
                raise CatalogError(f"titles[{i}].id", f"{title.id!r} appears twice")
            try:
                catalog.add(title)
            except CatalogError as exc:
                raise CatalogError(f"titles[{i}]", str(exc)) from None
        catalog._version = 0
        return catalog

    def save(self, path: str) -> None:
        """Write atomically: temporary file in the same directory, fsync, rename."""
        write_atomic(path, self.to_json(), prefix=".catalog-")

    @classmethod
    def load(cls, path: str) -> Catalog:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CatalogError(path, f"cannot read: {exc.strerror or exc}") from None
        try:
            return cls.from_json(data)
        except CatalogError as exc:
            raise CatalogError(path, str(exc)) from None


class _ObjectJSON(TypedDict):
    path: str
    size: int
    sha256: str
    kind: str


class _TitleJSON(TypedDict, total=False):
    id: str
    prefix: str
    mpd: str
    origins: list[str]
    added_at: float
    release_at: float
    objects: list[_ObjectJSON]


def _title_json(title: Title) -> _TitleJSON:
    out: _TitleJSON = {
        "id": title.id,
        "prefix": title.prefix,
        "mpd": title.mpd_path,
        "origins": list(title.origins),
        "added_at": title.added_at,
    }
    if title.release_at is not None:
        out["release_at"] = title.release_at
    out["objects"] = [
        {"path": o.path, "size": o.size, "sha256": o.sha256, "kind": o.kind} for o in title.objects
    ]
    return out


def _field(item: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in item:
        raise CatalogError(f"{where}.{key}", "missing")
    value = item[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CatalogError(f"{where}.{key}", f"{value!r} has the wrong type")
    return value


_TITLE_KEYS = frozenset(("id", "prefix", "mpd", "origins", "added_at", "release_at", "objects"))
_OBJECT_KEYS = frozenset(("path", "size", "sha256", "kind"))


def _title_from_json(item: object, where: str) -> Title:
    if not isinstance(item, dict):
        raise CatalogError(where, "must be an object")
    extra = set(item) - _TITLE_KEYS
    if extra:
        raise CatalogError(f"{where}.{sorted(extra)[0]}", "unknown key")
    origins = _field(item, "origins", list, where)
    for j, origin in enumerate(origins):
        if not isinstance(origin, str):
            raise CatalogError(f"{where}.origins[{j}]", "must be a string")
    raw_objects = _field(item, "objects", list, where)
    objects: list[CatalogObject] = []
    for j, raw in enumerate(raw_objects):
        at = f"{where}.objects[{j}]"
        if not isinstance(raw, dict):
            raise CatalogError(at, "must be an object")
        extra = set(raw) - _OBJECT_KEYS
        if extra:
            raise CatalogError(f"{at}.{sorted(extra)[0]}", "unknown key")
        try:
            objects.append(
                CatalogObject(
                    path=_field(raw, "path", str, at),
                    size=_field(raw, "size", int, at),
                    sha256=_field(raw, "sha256", str, at),
                    kind=_field(raw, "kind", str, at),
                )
            )
        except CatalogError as exc:
            if exc.where.startswith(at):
                raise
            raise CatalogError(at, exc.detail) from None
    release_at = item.get("release_at")
    if release_at is not None:
        release_at = float(_field(item, "release_at", (int, float), where))
    try:
        return Title(
            id=_field(item, "id", str, where),
            prefix=_field(item, "prefix", str, where),
            mpd_path=_field(item, "mpd", str, where),
            objects=tuple(objects),
            origins=tuple(origins),
            added_at=float(_field(item, "added_at", (int, float), where)),
            release_at=release_at,
        )
    except CatalogError as exc:
        if exc.where.startswith(where):
            raise
        raise CatalogError(f"{where}: {exc.where}", exc.detail) from None


# --------------------------------------------------------------------------- builders


def normalize_origin(origin: str) -> str:
    """An origin base URL as stored: http(s), a host, no query, no trailing slash."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CatalogError("origin", f"{origin!r} is not an http(s) URL like http://origin:8000")
    if parts.query or parts.fragment:
        raise CatalogError("origin", f"{origin!r} must not have a query or fragment")
    return origin.rstrip("/")


def title_id_and_prefix(mpd_path: str) -> tuple[str, str]:
    """``/titles/tos/manifest.mpd`` -> ``("tos", "/titles/tos/")``."""
    prefix = mpd_path[: mpd_path.rfind("/") + 1]
    title_id = prefix.rstrip("/").rsplit("/", 1)[-1]
    if not _TITLE_ID_RE.fullmatch(title_id):
        raise CatalogError(
            mpd_path,
            f"title id {title_id!r} (the MPD's directory name) must be 1-128 characters "
            "of [A-Za-z0-9._~-]",
        )
    return title_id, prefix


def find_mpds(directory: str) -> list[str]:
    """Every ``*.mpd`` file under ``directory``, sorted; CatalogError when two share a
    directory name (each MPD is one title, named by its directory)."""
    if not os.path.isdir(directory):
        raise CatalogError(directory, "is not a directory")
    found: list[str] = []
    for parent, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(parent, name) for name in sorted(files) if name.endswith(".mpd"))
    by_id: dict[str, str] = {}
    for path in found:
        title_id = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if title_id in by_id:
            raise CatalogError(
                path, f"title id {title_id!r} is also the directory of {by_id[title_id]}"
            )
        by_id[title_id] = path
    return found


def _url_root(url_prefix: str) -> str:
    """``/titles/`` or ``/titles`` -> ``/titles``; ``/`` or empty -> ``""``."""
    if url_prefix and not url_prefix.startswith("/"):
        raise CatalogError("url_prefix", f"{url_prefix!r} must start with '/'")
    if "//" in url_prefix or any(part in (".", "..") for part in url_prefix.split("/")):
        raise CatalogError("url_prefix", f"{url_prefix!r} must be a plain path")
    return url_prefix.rstrip("/")


def _hash_file(path: str, where: str) -> tuple[int, str]:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CatalogError(where, f"{path} is not a regular file")
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256")
            return os.fstat(fh.fileno()).st_size, digest.hexdigest()
    except FileNotFoundError:
        raise CatalogError(where, f"referenced by the MPD but missing: {path}") from None
    except IsADirectoryError:
        raise CatalogError(where, f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise CatalogError(where, f"cannot read {path}: {exc.strerror or exc}") from None


def _enumerate(
    data: bytes, mpd_url: str, mpd_path: str, where: str, origins: Sequence[str]
) -> MpdInfo:
    try:
        return parse_mpd(data, mpd_url, same_origins=[origin_of(o) for o in origins])
    except MpdError as exc:
        raise CatalogError(where, str(exc)) from None
    except ValueError as exc:
        raise CatalogError(where, f"{mpd_path}: {exc}") from None


def _check_under(info: MpdInfo, prefix: str, where: str) -> None:
    for obj in info.objects:
        if not obj.path.startswith(prefix):
            raise CatalogError(
                where, f"the MPD references {obj.path}, outside the title's prefix {prefix}"
            )


def build_title_from_dir(
    root_dir: str,
    mpd_file: str,
    url_prefix: str,
    origins: Sequence[str],
    now: float,
    *,
    release_at: float | None = None,
) -> Title:
    """The title of ``mpd_file`` (absolute, or relative to ``root_dir``), hashing every
    file it references. Its URL path is ``url_prefix`` + its path relative to
    ``root_dir``; ``origins`` are where appliances fetch its objects from."""
    root = os.path.abspath(root_dir)
    mpd_abs = os.path.join(root, mpd_file)  # an absolute mpd_file stays as it is
    relative = os.path.relpath(mpd_abs, root)
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir or os.path.isabs(relative):
        raise CatalogError(mpd_file, f"is not under {root_dir}")
    url_root = _url_root(url_prefix)
    mpd_path = url_root + "/" + relative.replace(os.sep, "/")
    title_id, prefix = title_id_and_prefix(mpd_path)
    stored_origins = tuple(normalize_origin(o) for o in origins)
    try:
        with open(mpd_abs, "rb") as fh:
            data = fh.read(_MAX_MPD_BYTES + 1)
    except OSError as exc:
        raise CatalogError(mpd_file, f"cannot read: {exc.strerror or exc}") from None
    info = _enumerate(data, quote(mpd_path), mpd_path, mpd_file, stored_origins)
    _check_under(info, prefix, mpd_file)
    objects = [
        CatalogObject(mpd_path, len(data), hashlib.sha256(data).hexdigest(), "mpd"),
    ]
    for obj in info.objects:
        if obj.path == mpd_path:
            continue
        local = os.path.join(root, *obj.path[len(url_root) + 1 :].split("/"))
        if os.path.commonpath([root, os.path.normpath(local)]) != root:
            raise CatalogError(f"{mpd_file}: {obj.path}", f"resolves outside {root_dir}")
        size, sha256 = _hash_file(local, f"{mpd_file}: {obj.path}")
        objects.append(CatalogObject(obj.path, size, sha256, obj.kind))
    objects.sort(key=lambda o: o.path)
    return Title(
        id=title_id,
        prefix=prefix,
        mpd_path=mpd_path,
        objects=tuple(objects),
        origins=stored_origins,
        added_at=now,
        release_at=release_at,
    )


def build_titles_from_dir(
    root_dir: str, url_prefix: str, origins: Sequence[str], now: float
) -> list[Title]:
    """One title per MPD found under ``root_dir`` (see :func:`find_mpds`)."""
    mpds = find_mpds(root_dir)
    if not mpds:
        raise CatalogError(root_dir, "contains no .mpd file")
    return [
        build_title_from_dir(root_dir, os.path.abspath(mpd), url_prefix, origins, now)
        for mpd in mpds
    ]


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise CatalogError(url, f"larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _hash_url(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async with session.get(url) as response:
        if response.status != 200:
            raise CatalogError(url, f"HTTP {response.status} (referenced by the MPD)")
        async for chunk in response.content.iter_chunked(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        expected = response.content_length
        if expected is not None and expected != size and "Content-Encoding" not in response.headers:
            raise CatalogError(url, f"got {size} bytes, Content-Length said {expected}")
    return size, digest.hexdigest()


async def build_title_from_url(
    session: aiohttp.ClientSession,
    mpd_url: str,
    now: float,
    *,
    concurrency: int = _DEFAULT_CONCURRENCY,
    release_at: float | None = None,
) -> Title:
    """The title of the MPD at ``mpd_url``, fetching every object it references (at most
    ``concurrency`` at a time) to hash it. Its origin is the URL's ``scheme://host:port``."""
    try:
        origin = origin_of(mpd_url)
    except ValueError as exc:
        raise CatalogError(mpd_url, str(exc)) from None
    if concurrency < 1:
        raise CatalogError("concurrency", f"{concurrency} must be at least 1")
    mpd_path = unquote(urlsplit(mpd_url).path)
    title_id, prefix = title_id_and_prefix(mpd_path)
    try:
        async with session.get(mpd_url) as response:
            if response.status != 200:
                raise CatalogError(mpd_url, f"HTTP {response.status}")
            data = await _read_bounded(response, _MAX_MPD_BYTES, mpd_url)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CatalogError(mpd_url, f"cannot fetch: {exc or type(exc).__name__}") from None
    info = _enumerate(data, mpd_url, mpd_path, mpd_url, [origin])
    _check_under(info, prefix, mpd_url)
    pending = iter([o for o in info.objects if o.path != mpd_path])
    objects = [CatalogObject(mpd_path, len(data), hashlib.sha256(data).hexdigest(), "mpd")]
    failures: list[CatalogError] = []

    async def worker() -> None:
        for obj in pending:
            if failures:
                return
            url = origin + quote(obj.path)
            try:
                size, sha256 = await _hash_url(session, url)
            except CatalogError as exc:
                failures.append(exc)
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(CatalogError(url, f"cannot fetch: {exc or type(exc).__name__}"))
                return
            objects.append(CatalogObject(obj.path, size, sha256, obj.kind))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failures:
        raise failures[0]
    objects.sort(key=lambda o: o.path)
    return Title(
        id=title_id,
        prefix=prefix,
        mpd_path=mpd_path,
        objects=tuple(objects),
        origins=(origin,),
        added_at=now,
        release_at=release_at,
    )


def catalog_totals(catalog: Catalog) -> tuple[int, int, int]:
    """(titles, objects, bytes)."""
    titles = catalog.titles.values()
    return len(titles), sum(len(t.objects) for t in titles), sum(t.size for t in titles)
