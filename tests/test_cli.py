"""The ``oca`` command line, run as a real child process (``python -m oca`` and the script).

Exit codes (oca/cli.py): 0 success, 1 the operation failed, 2 bad usage or bad
configuration, 3 startup failure.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import oca
from tests.appliance import new_key, write_tree

OCA_SCRIPT = Path(sys.executable).parent / "oca"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OCA_")}
    return subprocess.run(
        [sys.executable, "-m", "oca", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


def write_config(tmp_path: Path, server: str = "", rest: str = "", disks: int = 1) -> Path:
    paths = ", ".join(f'"{tmp_path}/ssd{i}"' for i in range(disks))
    config = tmp_path / "oca.toml"
    config.write_text(
        "[server]\n"
        'listen = ["127.0.0.1:0"]\n'
        f'state_dir = "{tmp_path}/state"\n'
        f"{server}\n"
        "[[storage.tiers]]\n"
        'name = "ssd"\n'
        f"paths = [{paths}]\n"
        f"{rest}\n"
    )
    return config


# ---------------------------------------------------------------- basics


def test_version() -> None:
    res = run("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"oca {oca.__version__}"


@pytest.mark.skipif(not OCA_SCRIPT.exists(), reason="console script not installed")
def test_console_script_version() -> None:
    res = subprocess.run([str(OCA_SCRIPT), "--version"], capture_output=True, text=True)
    assert (res.returncode, res.stdout.strip()) == (0, f"oca {oca.__version__}")


def test_module_help_lists_the_subcommands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("serve", "store", "sign", "demo"):
        assert cmd in res.stdout


def test_no_subcommand_is_usage_error() -> None:
    res = run()
    assert res.returncode == 2
    assert "usage: oca" in res.stderr


# ---------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    ("server", "rest", "key", "detail"),
    [
        ("bogus_key = 1", "", "server.bogus_key", "unknown key"),
        ('workers = "two"', "", "server.workers", "must be an integer"),
        ("workers = 1000", "", "server.workers", "must be <= 256"),
        ("header_timeout_seconds = 0", "", "server.header_timeout_seconds", ">= 0.1"),
        ('log_level = "loud"', "", "server.log_level", "must be one of"),
        ('internal_listen = ["nowhere"]', "", "server.internal_listen[0]", "not host:port"),
        ("", "capacity_bytes = -1", "storage.tiers[0].capacity_bytes", "must be >= 0"),
        ("", '[auth]\nkeys = [{ id = "k1", secret = "abcd" }]', "auth.keys[0].secret", "32 bytes"),
        ("", "[nonsense]\nx = 1", "nonsense", "unknown key"),
    ],
)
def test_serve_with_bad_config_exits_2_naming_the_key(
    tmp_path: Path, server: str, rest: str, key: str, detail: str
) -> None:
    res = run("serve", "-c", str(write_config(tmp_path, server, rest)))
    assert res.returncode == 2, res.stderr
    assert f"oca: bad configuration: {key}:" in res.stderr
    assert detail in res.stderr
    assert "oca: ready" not in res.stdout


def test_serve_with_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    res = run("serve", "-c", str(tmp_path / "absent.toml"))
    assert res.returncode == 2
    assert "absent.toml does not exist" in res.stderr


def test_serve_with_invalid_toml_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "oca.toml"
    config.write_text("[server\nlisten = 1\n")
    res = run("serve", "-c", str(config))
    assert res.returncode == 2
    assert "is not valid TOML" in res.stderr


def test_bad_environment_override_exits_2_naming_the_key(tmp_path: Path) -> None:
    res = run("serve", "-c", str(write_config(tmp_path)), env={"OCA_SERVER__WORKERS": "lots"})
    assert res.returncode == 2
    assert "server.workers" in res.stderr


# ---------------------------------------------------------------- --print-config


def test_print_config_shows_the_effective_config_with_secrets_redacted(tmp_path: Path) -> None:
    secret = new_key()
    rest = f'[auth]\nkeys = [{{ id = "k1", secret = "{secret}" }}]'
    res = run("serve", "-c", str(write_config(tmp_path, "workers = 2", rest)), "--print-config")
    assert res.returncode == 0, res.stderr
    cfg = orjson.loads(res.stdout)
    assert cfg["server"]["workers"] == 2
    assert cfg["server"]["listen"] == ["127.0.0.1:0"]
    assert cfg["server"]["max_connections"] == 20000  # defaults filled in
    assert cfg["storage"]["tiers"][0]["paths"] == [f"{tmp_path}/ssd0"]
    assert cfg["auth"]["keys"] == [{"id": "k1", "secret": "<redacted>"}]
    assert secret not in res.stdout
    assert not (tmp_path / "state").exists()  # printing starts nothing


def test_environment_override_shows_in_print_config(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, "workers = 2"))
    res = run("serve", "-c", config, "--print-config", env={"OCA_SERVER__WORKERS": "3"})
    assert res.returncode == 0, res.stderr
    assert orjson.loads(res.stdout)["server"]["workers"] == 3
    # A CLI flag beats the environment.
    res = run(
        "serve", "-c", config, "--workers", "4", "--print-config", env={"OCA_SERVER__WORKERS": "3"}
    )
    assert orjson.loads(res.stdout)["server"]["workers"] == 4


def test_list_environment_override_accepts_commas(tmp_path: Path) -> None:
    res = run(
        "serve",
        "-c",
        str(write_config(tmp_path)),
        "--print-config",
        env={"OCA_SERVER__LISTEN": "127.0.0.1:81,[::1]:81"},
    )
    assert res.returncode == 0, res.stderr
    assert orjson.loads(res.stdout)["server"]["listen"] == ["127.0.0.1:81", "[::1]:81"]


# ---------------------------------------------------------------- store import / ls / verify


FILES = {
    "/titles/cli/manifest.mpd": b"<MPD/>",
    "/titles/cli/v720/init.mp4": os.urandom(2048),
    **{f"/titles/cli/v720/seg-{i}.m4s": os.urandom(10_000 + i) for i in range(6)},
}


def test_store_import_ls_verify_round_trip(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, disks=2))
    src = write_tree(tmp_path / "src", FILES)

    res = run("store", "import", "-c", config, str(src))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"imported {len(FILES)} objects" in res.stdout
    again = run("store", "import", "-c", config, str(src))
    assert again.returncode == 0
    assert f"imported 0 objects (0 B) into tier ssd; {len(FILES)} unchanged" in again.stdout

    res = run("store", "ls", "-c", config)
    assert res.returncode == 0
    listed = [line.split("\t") for line in res.stdout.splitlines()]
    assert [row[0] for row in listed] == sorted(FILES)

    res = run("store", "ls", "-c", config, "--json")
    assert res.returncode == 0
    records = {r["path"]: r for r in orjson.loads(res.stdout)}
    assert set(records) == set(FILES)
    for path, data in FILES.items():
        assert records[path]["size"] == len(data)
        assert records[path]["sha256"] == hashlib.sha256(data).hexdigest()
        assert records[path]["tier"] == "ssd"
        stored = Path(records[path]["disk"]) / "objects" / path.lstrip("/")
        assert stored.read_bytes() == data

    res = run("store", "verify", "-c", config)
    assert res.returncode == 0, res.stdout
    assert f"verified {len(FILES)} objects" in res.stdout
    assert "0 bad" in res.stdout

    # Flip one byte of one stored object, keeping its size.
    victim = "/titles/cli/v720/seg-3.m4s"
    stored = Path(records[victim]["disk"]) / "objects" / victim.lstrip("/")
    with open(stored, "r+b") as fh:
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))

    res = run("store", "verify", "-c", config, "--no-quarantine")
    assert res.returncode == 1
    assert f"BAD sha256: {victim}" in res.stdout
    assert "1 bad, 0 quarantined" in res.stdout

    res = run("store", "verify", "-c", config)
    assert res.returncode == 1
    assert "1 bad, 1 quarantined" in res.stdout
    res = run("store", "ls", "-c", config, "--json")
    assert victim not in {r["path"] for r in orjson.loads(res.stdout)}
    res = run("store", "verify", "-c", config)
    assert res.returncode == 0, res.stdout


def test_store_import_of_a_missing_directory_exits_1(tmp_path: Path) -> None:
    res = run("store", "import", "-c", str(write_config(tmp_path)), str(tmp_path / "nope"))
    assert res.returncode == 1
    assert "is not a directory" in res.stdout


def test_store_import_into_an_unknown_tier_exits_1(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"/a/b.m4s": b"x"})
    res = run("store", "import", "-c", str(write_config(tmp_path)), str(src), "--tier", "tape")
    assert res.returncode == 1
    assert "unknown tier 'tape'" in res.stdout


# ---------------------------------------------------------------- sign


def test_sign_without_keys_exits_2(tmp_path: Path) -> None:
    res = run("sign", "-c", str(write_config(tmp_path)), "/titles/a/seg.m4s")
    assert res.returncode == 2
    assert "auth.keys" in res.stderr
    assert "no signing keys configured" in res.stderr
    assert res.stdout == ""


@pytest.fixture
def signing_config(tmp_path: Path) -> Path:
    rest = f'[auth]\nkeys = [{{ id = "k1", secret = "{new_key()}" }}]'
    return write_config(tmp_path, "", rest)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["titles/a/seg.m4s"], "PATH must start with /"),
        (["/titles/a/seg.m4s", "--client", "not-an-ip"], "is not an IP address or prefix"),
        (["/titles/a/seg.m4s", "--ttl", "0"], "--ttl must be positive"),
        (["/titles/a/seg.m4s", "--key-id", "k7"], "key 'k7' is not configured"),
    ],
)
def test_sign_rejects_bad_arguments_with_exit_2(
    signing_config: Path, args: list[str], message: str
) -> None:
    res = run("sign", "-c", str(signing_config), *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert res.stdout == ""


def test_sign_prints_one_signed_url(signing_config: Path) -> None:
    res = run(
        "sign",
        "-c",
        str(signing_config),
        "/titles/a/seg.m4s",
        "--base-url",
        "http://192.0.2.1:8080/",
        "--ttl",
        "60",
    )
    assert res.returncode == 0, res.stderr
    url = res.stdout.strip()
    assert url.startswith("http://192.0.2.1:8080/t/v1.k1.")
    assert url.endswith("/titles/a/seg.m4s")
    assert len(res.stdout.splitlines()) == 1


def test_missing_tls_certificate_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "oca.toml"
    conf.write_text(
        '[tls]\nlisten = ["127.0.0.1:0"]\n'
        f'cert_file = "{tmp_path}/nope.pem"\nkey_file = "{tmp_path}/nope.key"\n'
        f'[[storage.tiers]]\nname = "ssd"\npaths = ["{tmp_path}/ssd0"]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "oca", "serve", "-c", str(conf)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "tls.cert_file" in proc.stderr and "nope.pem" in proc.stderr


def test_unusable_tls_certificate_stops_startup_with_status_3(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    conf = tmp_path / "oca.toml"
    conf.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{tmp_path}/state"\n'
        '[tls]\nlisten = ["127.0.0.1:0"]\n'
        f'cert_file = "{tmp_path}/bad.pem"\nkey_file = "{tmp_path}/bad.pem"\n'
        f'[[storage.tiers]]\nname = "ssd"\npaths = ["{tmp_path}/ssd0"]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "oca", "serve", "-c", str(conf), "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "could not start" in proc.stderr
    assert "oca: ready" not in proc.stdout
