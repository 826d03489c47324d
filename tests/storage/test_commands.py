from __future__ import annotations

import io
import os
from pathlib import Path

import orjson
import pytest

from oca.config import StorageConfig, TierConfig
from oca.storage.commands import format_bytes, run_import, run_ls, run_verify
from oca.storage.store import Store

from . import make_config, sha256_of, write_source

TREE = {
    "titles/tos/manifest.mpd": b"<MPD/>",
    "titles/tos/v720/init.mp4": b"init" * 50,
    "titles/tos/v720/seg-00001.m4s": b"\x01" * 3000,
    "titles/café/sous-titres ü.vtt": b"WEBVTT\n",
}


@pytest.fixture
def cfg(tmp_path: Path) -> StorageConfig:
    return make_config(tmp_path / "disks")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "package"
    for name, data in TREE.items():
        write_source(root, name, data)
    os.symlink(root / "titles/tos/manifest.mpd", root / "titles/link.mpd")
    os.symlink(root / "titles/tos", root / "titles/linked-dir")
    os.mkfifo(root / "titles/pipe")
    return root


def run(fn: object, *args: object, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()
    code = fn(*args, out, **kwargs)  # type: ignore[operator]
    assert isinstance(code, int)
    return code, out.getvalue()


def test_import_ls_and_verify_a_tree(cfg: StorageConfig, tree: Path) -> None:
    code, text = run(run_import, cfg, str(tree))
    assert code == 0, text
    assert "imported 4 objects" in text and "3 skipped, 0 failed" in text
    assert text.count("warning: skipping") == 3
    with Store.open(cfg, create=False) as store:
        for name, data in TREE.items():
            rec = store.lookup("/" + name)
            assert rec is not None and rec.sha256 == sha256_of(data) and rec.tier == "ssd"
        assert store.lookup("/titles/link.mpd") is None

    code, text = run(run_ls, cfg)
    assert code == 0
    lines = text.splitlines()
    assert [line.split("\t")[0] for line in lines] == sorted("/" + n for n in TREE)
    path, size, tier, disk, prefix = lines[0].split("\t")
    assert path == "/titles/café/sous-titres ü.vtt"
    assert (int(size), tier, prefix) == (
        7,
        "ssd",
        sha256_of(TREE["titles/café/sous-titres ü.vtt"])[:12],
    )
    assert disk in cfg.tiers[0].paths

    code, text = run(run_ls, cfg, as_json=True)
    listed = orjson.loads(text)
    assert code == 0 and len(listed) == 4
    assert set(listed[0]) >= {"path", "size", "sha256", "mtime", "tier", "disk", "hits"}

    code, text = run(run_verify, cfg)
    assert code == 0, text
    assert "verified 4 objects" in text and "0 bad" in text

    # A second import of the same tree copies nothing.
    code, text = run(run_import, cfg, str(tree))
    assert code == 0 and "imported 0 objects" in text and "4 unchanged" in text


def test_verify_finds_and_quarantines_a_corrupted_object(cfg: StorageConfig, tree: Path) -> None:
    assert run(run_import, cfg, str(tree))[0] == 0
    with Store.open(cfg, create=False) as store:
        rec = store.lookup("/titles/tos/v720/seg-00001.m4s")
        assert rec is not None
        file = store.file_path(rec)
    with open(file, "r+b") as f:
        f.seek(1500)
        f.write(b"\x02")
    code, text = run(run_verify, cfg, quarantine=False)
    assert code == 1 and "BAD sha256: /titles/tos/v720/seg-00001.m4s" in text
    assert os.path.exists(file)
    code, text = run(run_verify, cfg)
    assert code == 1 and "quarantined to" in text and "1 quarantined" in text
    assert not os.path.exists(file)
    code, text = run(run_verify, cfg)
    assert code == 0 and "verified 3 objects" in text


def test_import_into_another_tier_and_partial_failure(tmp_path: Path, tree: Path) -> None:
    cfg = make_config(tmp_path / "disks", hdd_capacity=1000)
    code, text = run(run_import, cfg, str(tree), tier="hdd")
    # The 3000-byte segment does not fit in the 1000 bytes of the hdd tier.
    assert code == 1
    assert "error: /titles/tos/v720/seg-00001.m4s" in text and "tier hdd" in text
    assert "imported 3 objects" in text and "1 failed" in text
    code, text = run(run_import, cfg, str(tree), tier="nvme")
    assert code == 1 and "unknown tier" in text


def test_errors_before_anything_is_done(cfg: StorageConfig, tmp_path: Path) -> None:
    code, text = run(run_import, cfg, str(tmp_path / "nope"))
    assert code == 1 and "is not a directory" in text
    missing = make_config(tmp_path / "never-created")
    for fn in (run_ls, run_verify):
        code, text = run(fn, missing)
        assert code == 1 and "no usable disk" in text


def test_failed_disks_are_reported_by_ls_and_fail_verify(cfg: StorageConfig, tree: Path) -> None:
    assert run(run_import, cfg, str(tree))[0] == 0
    os.rename(cfg.tiers[1].paths[0], cfg.tiers[1].paths[0] + ".away")
    code, text = run(run_ls, cfg)
    assert code == 0 and text.startswith("# disk ") and "is failed" in text
    code, text = run(run_verify, cfg)
    assert code == 1 and "1 failed disks" in text


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 << 30) == "5.0 GiB"


def test_a_file_name_that_is_not_utf8_fails_the_import(cfg: StorageConfig, tmp_path: Path) -> None:
    root = tmp_path / "package"
    write_source(root, "ok.m4s", b"ok")
    with open(os.path.join(os.fsencode(root), b"bad-\xff.m4s"), "wb") as f:
        f.write(b"bad")
    code, text = run(run_import, cfg, str(root))
    assert code == 1
    assert "cannot be an object path: is not valid UTF-8" in text
    assert "imported 1 objects" in text and "1 failed" in text


def test_import_refuses_the_token_prefix(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "t" / "x").mkdir(parents=True)
    (src / "t" / "x" / "seg.m4s").write_bytes(b"data")
    (src / "ok.m4s").write_bytes(b"fine")
    cfg = StorageConfig(tiers=(TierConfig("ssd", (str(tmp_path / "d0"),)),))
    out = io.StringIO()
    assert run_import(cfg, str(src), out) == 1
    assert "/t/x/seg.m4s: cannot be an object path: /t/ is reserved" in out.getvalue()
    assert "imported 1 objects" in out.getvalue()
