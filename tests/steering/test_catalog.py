"""steering.catalog: building titles from real trees on disk and over HTTP, the catalog
file, lookups, and `oca catalog` end to end."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from steering.catalog import (
    Catalog,
    CatalogError,
    CatalogObject,
    Title,
    build_title_from_dir,
    build_title_from_url,
    build_titles_from_dir,
    find_mpds,
)

NOW = 1_795_000_000.0
ORIGIN = "http://origin:8000"
REPO = Path(__file__).resolve().parents[2]

TOS_MPD = """<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT6S">
  <Period>
    <AdaptationSet contentType="video" mimeType="video/mp4">
      <SegmentTemplate timescale="1000" duration="2000" initialization="$RepresentationID$/init.mp4"
                       media="$RepresentationID$/seg-$Number%05d$.m4s"/>
      <Representation id="v720" bandwidth="3000000"/>
      <Representation id="v480" bandwidth="1000000"/>
    </AdaptationSet>
    <AdaptationSet contentType="text" mimeType="text/vtt" lang="en">
      <Representation id="en" bandwidth="256"><BaseURL>subs/en.vtt</BaseURL></Representation>
    </AdaptationSet>
  </Period>
</MPD>
"""

BBB_MPD = """<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT60S">
  <Period><AdaptationSet mimeType="video/mp4">
    <Representation id="v" bandwidth="1"><BaseURL>bbb.mp4</BaseURL>
      <SegmentBase indexRange="100-199"><Initialization range="0-99"/></SegmentBase>
    </Representation>
  </AdaptationSet></Period>
</MPD>
"""


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tos_files() -> dict[str, bytes]:
    files = {"manifest.mpd": TOS_MPD.encode(), "subs/en.vtt": b"WEBVTT\n\n"}
    for rep in ("v720", "v480"):
        files[f"{rep}/init.mp4"] = f"init {rep}".encode()
        for n in range(1, 4):
            files[f"{rep}/seg-{n:05d}.m4s"] = os.urandom(100 + n)
    return files


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "packages"
    for name, data in tos_files().items():
        write(root / "tos" / name, data)
    write(root / "more" / "bbb" / "manifest.mpd", BBB_MPD.encode())
    write(root / "more" / "bbb" / "bbb.mp4", os.urandom(5000))
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- building


def test_build_from_dir_hashes_every_file(tree: Path) -> None:
    title = build_title_from_dir(str(tree), "tos/manifest.mpd", "/titles", [ORIGIN + "/"], NOW)
    assert (title.id, title.prefix, title.mpd_path) == (
        "tos",
        "/titles/tos/",
        "/titles/tos/manifest.mpd",
    )
    assert title.origins == (ORIGIN,) and title.added_at == NOW and title.release_at is None
    files = tos_files()
    assert [o.path for o in title.objects] == sorted(f"/titles/tos/{name}" for name in files)
    for obj in title.objects:
        data = (tree / "tos" / obj.path.removeprefix("/titles/tos/")).read_bytes()
        assert (obj.size, obj.sha256) == (len(data), sha(data))
    kinds = {o.path.removeprefix("/titles/tos/"): o.kind for o in title.objects}
    assert kinds["manifest.mpd"] == "mpd" and kinds["subs/en.vtt"] == "subtitle"
    assert kinds["v720/init.mp4"] == "init" and kinds["v480/seg-00003.m4s"] == "media"
    assert title.size == sum(len(d) for d in files.values())


def test_build_all_titles_under_a_directory(tree: Path) -> None:
    assert [Path(p).relative_to(tree).as_posix() for p in find_mpds(str(tree))] == [
        "more/bbb/manifest.mpd",
        "tos/manifest.mpd",
    ]
    titles = build_titles_from_dir(str(tree), "/", [ORIGIN], NOW)
    assert [(t.id, t.prefix) for t in titles] == [("bbb", "/more/bbb/"), ("tos", "/tos/")]
    bbb = titles[0]
    assert [(o.path, o.kind) for o in bbb.objects] == [
        ("/more/bbb/bbb.mp4", "file"),
        ("/more/bbb/manifest.mpd", "mpd"),
    ]


def test_missing_file_is_named(tree: Path) -> None:
    (tree / "tos" / "v480" / "seg-00002.m4s").unlink()
    with pytest.raises(CatalogError) as info:
        build_title_from_dir(str(tree), "tos/manifest.mpd", "/titles", [ORIGIN], NOW)
    assert "/titles/tos/v480/seg-00002.m4s" in str(info.value)
    assert "missing" in info.value.detail


def test_object_outside_the_prefix_and_bad_mpd(tree: Path) -> None:
    write(
        tree / "x" / "manifest.mpd", TOS_MPD.replace("subs/en.vtt", "../tos/subs/en.vtt").encode()
    )
    with pytest.raises(CatalogError, match="outside the title's prefix /x/"):
        build_title_from_dir(str(tree), "x/manifest.mpd", "/", [ORIGIN], NOW)
    write(
        tree / "y" / "manifest.mpd", b'<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic"/>'
    )
    with pytest.raises(CatalogError, match="MPD@type: live MPDs are not supported"):
        build_title_from_dir(str(tree), "y/manifest.mpd", "/", [ORIGIN], NOW)
    with pytest.raises(CatalogError, match="origin"):
        build_title_from_dir(str(tree), "tos/manifest.mpd", "/", ["origin:8000"], NOW)
    with pytest.raises(CatalogError, match="title id"):
        write(tree / "bad id" / "m.mpd", BBB_MPD.encode())
        build_title_from_dir(str(tree), "bad id/m.mpd", "/", [ORIGIN], NOW)


def test_duplicate_title_ids_refused(tmp_path: Path) -> None:
    write(tmp_path / "a" / "tos" / "manifest.mpd", BBB_MPD.encode())
    write(tmp_path / "b" / "tos" / "manifest.mpd", BBB_MPD.encode())
    with pytest.raises(CatalogError, match="title id 'tos'"):
        find_mpds(str(tmp_path))


# --------------------------------------------------------------------------- model


def obj(path: str, kind: str = "media", size: int = 1) -> CatalogObject:
    return CatalogObject(path, size, "0" * 64, kind)  # type: ignore[arg-type]


def title(title_id: str, prefix: str, *names: str) -> Title:
    objects = sorted(
        [obj(prefix + "m.mpd", "mpd"), *(obj(prefix + n) for n in names)], key=lambda o: o.path
    )
    return Title(title_id, prefix, prefix + "m.mpd", tuple(objects), (ORIGIN,), NOW)


def test_catalog_lookup_version_and_nesting() -> None:
    catalog = Catalog([title("tos", "/titles/tos/", "a/1.m4s")])
    assert catalog.version == 0 and len(catalog) == 1
    found = catalog.lookup("/titles/tos/a/1.m4s")
    assert found is not None and found[0].id == "tos" and found[1].size == 1
    assert catalog.lookup("/titles/tos/a/2.m4s") is None
    tos = catalog.get("tos")
    assert catalog.title_of("/titles/tos/a/2.m4s") is tos
    assert catalog.title_of("/titles/tos/") is tos
    assert catalog.title_of("/titles/tos2/a") is None and catalog.title_of("/titles/") is None
    catalog.add(title("bbb", "/titles/bbb/"))
    assert catalog.version == 1
    catalog.add(title("tos", "/titles/tos/", "b.m4s"))  # replaces
    assert catalog.version == 2
    assert catalog.lookup("/titles/tos/a/1.m4s") is None and catalog.lookup("/titles/tos/b.m4s")
    for bad, words in [
        (title("x", "/titles/tos/"), "already title tos's"),
        (title("x", "/titles/tos/inner/"), "lies inside title tos's"),
        (title("x", "/titles/"), "contains title"),
    ]:
        with pytest.raises(CatalogError, match=words):
            catalog.add(bad)
    assert catalog.version == 2
    catalog.remove("tos")
    assert catalog.version == 3 and catalog.title_of("/titles/tos/b.m4s") is None
    catalog.add(title("inner", "/titles/tos/inner/"))  # fine once tos is gone
    with pytest.raises(KeyError):
        catalog.remove("tos")
    with pytest.raises(TypeError):
        catalog.titles["y"] = title("y", "/y/")  # type: ignore[index]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            lambda: Title("tos", "/t/", "/t/m.mpd", (obj("/u/x"), obj("/t/m.mpd", "mpd")), (), NOW),
            "outside",
        ),
        (
            lambda: Title("tos", "/t/", "/t/m.mpd", (obj("/t/x"), obj("/t/m.mpd", "mpd")), (), NOW),
            "sorted",
        ),
        (lambda: Title("tos", "/t/", "/t/m.mpd", (obj("/t/x"),), (), NOW), "not among"),
        (lambda: Title("a/b", "/t/", "/t/m.mpd", (), (), NOW), "characters"),
        (lambda: Title("tos", "t/", "t/m.mpd", (), (), NOW), "start and end"),
        (lambda: CatalogObject("/t/x", -1, "0" * 64, "media"), "non-negative"),
        (lambda: CatalogObject("/t/x", 1, "0" * 63, "media"), "64 lowercase hex"),
        (lambda: CatalogObject("/t/x", 1, "0" * 64, "video"), "kind"),  # type: ignore[arg-type]
    ],
)
def test_model_validation(make: object, words: str) -> None:
    with pytest.raises(CatalogError, match=words):
        make()  # type: ignore[operator]


def test_save_load_roundtrip(tree: Path, tmp_path: Path) -> None:
    titles = build_titles_from_dir(str(tree), "/titles", [ORIGIN, "https://origin2"], NOW)
    released = Title(
        **{
            **{
                f: getattr(titles[0], f)
                for f in ("id", "prefix", "mpd_path", "objects", "origins", "added_at")
            },
            "release_at": NOW + 86400,
        }
    )
    catalog = Catalog([released, titles[1]])
    path = tmp_path / "out" / "catalog.json"
    path.parent.mkdir()
    catalog.save(str(path))
    assert os.listdir(path.parent) == ["catalog.json"]  # no temporary file left
    loaded = Catalog.load(str(path))
    assert dict(loaded.titles) == dict(catalog.titles)
    doc = orjson.loads(path.read_bytes())
    assert doc["schema"] == "oca.catalog" and doc["version"] == 1
    assert set(doc["titles"][0]) == {
        "id",
        "prefix",
        "mpd",
        "origins",
        "added_at",
        "release_at",
        "objects",
    }
    assert "release_at" not in doc["titles"][1]
    assert set(doc["titles"][1]["objects"][0]) == {"path", "size", "sha256", "kind"}


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.update(schema="x"), "schema"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["titles"][0]["objects"][1].update(sha256="XYZ"), "titles[0].objects[1]"),
        (lambda d: d["titles"][0]["objects"][0].update(size="1"), "titles[0].objects[0].size"),
        (lambda d: d["titles"][0].pop("prefix"), "titles[0].prefix"),
        (lambda d: d["titles"][0].update(color="red"), "titles[0].color"),
        (lambda d: d["titles"].append(d["titles"][0]), "titles[2].id"),
    ],
)
def test_load_errors_name_the_field(mutate: object, where: str, tree: Path) -> None:
    doc = orjson.loads(Catalog(build_titles_from_dir(str(tree), "/", [ORIGIN], NOW)).to_json())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(CatalogError) as info:
        Catalog.from_json(orjson.dumps(doc))
    assert str(info.value).startswith(where)


def test_load_missing_and_not_json(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        Catalog.load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_bytes(b"{")
    with pytest.raises(CatalogError, match="not JSON"):
        Catalog.load(str(tmp_path / "bad.json"))


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def origin(tree: Path) -> Iterator[str]:
    """A real HTTP origin on 127.0.0.1 serving ``tree`` at /titles/, in its own thread."""
    app = web.Application()
    app.router.add_static("/titles/", str(tree))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def fetch(url: str, concurrency: int = 3) -> Title:
    async with aiohttp.ClientSession() as session:
        return await build_title_from_url(session, url, NOW, concurrency=concurrency)


def test_build_from_url_matches_build_from_dir(tree: Path, origin: str) -> None:
    from_url = asyncio.run(fetch(f"{origin}/titles/tos/manifest.mpd"))
    from_dir = build_title_from_dir(str(tree), "tos/manifest.mpd", "/titles", [origin], NOW)
    assert from_url.origins == (origin,)
    assert from_url == from_dir


def test_build_from_url_errors(tree: Path, origin: str) -> None:
    (tree / "tos" / "v720" / "seg-00003.m4s").unlink()
    with pytest.raises(CatalogError) as info:
        asyncio.run(fetch(f"{origin}/titles/tos/manifest.mpd", concurrency=1))
    assert info.value.where == f"{origin}/titles/tos/v720/seg-00003.m4s"
    assert "HTTP 404" in info.value.detail
    with pytest.raises(CatalogError, match="HTTP 404"):
        asyncio.run(fetch(f"{origin}/titles/nope/manifest.mpd"))
    with pytest.raises(CatalogError, match="cannot fetch"):
        asyncio.run(fetch("http://127.0.0.1:1/titles/tos/manifest.mpd"))


# --------------------------------------------------------------------------- CLI


def oca(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "oca", "catalog", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )


def test_cli_build_add_ls(tree: Path, tmp_path: Path, origin: str) -> None:
    out = tmp_path / "catalog.json"
    built = oca(
        "build",
        "--out",
        str(out),
        "--url-prefix",
        "/titles/tos",
        "--origin",
        ORIGIN,
        str(tree / "tos"),
    )
    assert built.returncode == 0, built.stderr
    assert "1 titles" in built.stdout
    catalog = Catalog.load(str(out))
    assert list(catalog.titles) == ["tos"] and catalog.titles["tos"].prefix == "/titles/tos/"
    # add a title over HTTP (the origin serves the tree at /titles/)
    added = oca("add", "--catalog", str(out), f"{origin}/titles/more/bbb/manifest.mpd")
    assert added.returncode == 0, added.stderr
    assert sorted(Catalog.load(str(out)).titles) == ["bbb", "tos"]
    listed = oca("ls", "--catalog", str(out))
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "PREFIX", "OBJECTS", "BYTES", "ORIGINS"]
    assert lines[1].split()[:3] == ["bbb", "/titles/more/bbb/", "2"]
    assert lines[2].split()[:3] == ["tos", "/titles/tos/", "10"]
    assert lines[-1].startswith("2 titles, 12 objects, ")


def test_cli_bad_input_writes_nothing(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "catalog.json"
    (tree / "tos" / "subs" / "en.vtt").unlink()
    failed = oca("build", "--out", str(out), "--origin", ORIGIN, str(tree))
    assert failed.returncode == 2
    assert failed.stderr.startswith("oca catalog: ") and "/tos/subs/en.vtt" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert not out.exists()
    no_origin = oca("build", "--out", str(out), str(tree))
    assert no_origin.returncode == 2 and "--origin" in no_origin.stderr
    missing = oca("ls", "--catalog", str(out))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_cli_ls_json_in_process(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from oca.cli import main

    out = tmp_path / "catalog.json"
    assert main(["catalog", "build", "--out", str(out), "--origin", ORIGIN, str(tree)]) == 0
    capsys.readouterr()
    assert main(["catalog", "ls", "--catalog", str(out), "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert [(t["id"], t["objects"]) for t in doc["titles"]] == [("bbb", 2), ("tos", 10)]
    assert doc["titles"][1]["bytes"] == sum(len(d) for d in tos_files().values())
    # adding a title whose prefix nests in another is refused and leaves the file alone
    before = out.read_bytes()
    write(tree / "tos" / "inner" / "manifest.mpd", BBB_MPD.encode())
    write(tree / "tos" / "inner" / "bbb.mp4", b"x")
    assert main(["catalog", "add", "--catalog", str(out), "--origin", ORIGIN, str(tree)]) == 2
    assert "lies inside title tos's prefix /tos/" in capsys.readouterr().err
    assert out.read_bytes() == before
