"""``oca catalog``: build, extend and list a catalog file from DASH packages.

Theory of operation
-------------------
A SOURCE is either a directory (every ``*.mpd`` under it is one title, see
:func:`steering.catalog.find_mpds`; its URL path is ``--url-prefix`` + its path in the
directory, and appliances fetch its objects from the ``--origin`` URLs) or the http(s)
URL of one MPD (fetched, every object fetched and hashed; its origin is the URL's).
Every title is built and checked before anything is written, and the catalog file is
replaced atomically, so a bad SOURCE leaves the old file untouched. Bad input (a
missing file, a malformed MPD, a title id used twice, nesting prefixes) prints one line
and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import aiohttp
import orjson

from steering.catalog import (
    Catalog,
    CatalogError,
    Title,
    build_title_from_url,
    build_titles_from_dir,
    catalog_totals,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "run_catalog"]

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


async def _fetch_titles(urls: Sequence[str], now: float) -> list[Title]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return [await build_title_from_url(session, url, now) for url in urls]


def _build(
    sources: Sequence[str], url_prefix: str, origins: Sequence[str], now: float
) -> list[Title]:
    directories = [s for s in sources if not _is_url(s)]
    urls = [s for s in sources if _is_url(s)]
    if directories and not origins:
        raise CatalogError(
            "--origin", "a directory SOURCE needs at least one origin its objects are served from"
        )
    titles: list[Title] = []
    for directory in directories:
        titles.extend(build_titles_from_dir(directory, url_prefix, origins, now))
    if urls:
        titles.extend(asyncio.run(_fetch_titles(urls, now)))
    seen: dict[str, Title] = {}
    for title in titles:
        if title.id in seen:
            raise CatalogError(
                f"title {title.id}",
                f"found twice: {seen[title.id].mpd_path} and {title.mpd_path}",
            )
        seen[title.id] = title
    return titles


def _summary(catalog: Catalog) -> str:
    titles, objects, size = catalog_totals(catalog)
    return f"{titles} titles, {objects} objects, {size} bytes"


def _run_build(args: argparse.Namespace, out: TextIO, now: float) -> int:
    titles = _build(args.sources, args.url_prefix, args.origin, now)
    catalog = Catalog(titles)
    catalog.save(args.out)
    print(f"wrote {args.out}: {_summary(catalog)}", file=out)
    return EXIT_OK


def _run_add(args: argparse.Namespace, out: TextIO, now: float) -> int:
    catalog = Catalog.load(args.catalog)
    titles = _build(args.sources, args.url_prefix, args.origin, now)
    for title in titles:
        catalog.add(title)
    catalog.save(args.catalog)
    names = ", ".join(t.id for t in titles)
    print(f"updated {args.catalog} with {names}: {_summary(catalog)}", file=out)
    return EXIT_OK


def _run_ls(args: argparse.Namespace, out: TextIO) -> int:
    catalog = Catalog.load(args.catalog)
    titles = [catalog.titles[key] for key in sorted(catalog.titles)]
    if args.json:
        doc = [
            {
                "id": t.id,
                "prefix": t.prefix,
                "mpd": t.mpd_path,
                "objects": len(t.objects),
                "bytes": t.size,
                "origins": list(t.origins),
                "added_at": t.added_at,
                "release_at": t.release_at,
            }
            for t in titles
        ]
        out.write(orjson.dumps({"titles": doc}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    rows = [("ID", "PREFIX", "OBJECTS", "BYTES", "ORIGINS")]
    rows += [
        (t.id, t.prefix, str(len(t.objects)), str(t.size), " ".join(t.origins)) for t in titles
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [row[2].rjust(widths[2]), row[3].rjust(widths[3]), row[4]]
        print("  ".join(cells).rstrip(), file=out)
    print(_summary(catalog), file=out)
    return EXIT_OK


def run_catalog(
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: float | None = None,
) -> int:
    """Run ``oca catalog build|add|ls``; returns the exit status.

    ``args`` holds ``catalog_command`` ("build" | "add" | "ls"), ``out`` (build) or
    ``catalog`` (add, ls), ``url_prefix``, ``origin`` (a list) and ``sources`` (build,
    add), ``json`` (ls), as ``oca``'s argument parser defines them.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    when = time.time() if now is None else now
    try:
        if args.catalog_command == "build":
            return _run_build(args, out, when)
        if args.catalog_command == "add":
            return _run_add(args, out, when)
        return _run_ls(args, out)
    except CatalogError as exc:
        print(f"oca catalog: {exc}", file=err)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"oca catalog: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return EXIT_BAD_INPUT
