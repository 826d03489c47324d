"""``oca bench serve``: a smoke run with tiny settings, and the pure helpers it relies on.

The smoke run only checks that the benchmark works end to end (both servers start, wrk
produces results, nothing is left running); it asserts no timings.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import psutil
import pytest

from bench.serve import main
from bench.servers import nginx_binary, nginx_config
from bench.wrk import (
    RESULT_MARK,
    WrkBuildError,
    debian_deb_src_stanzas,
    default_cache_dir,
    parse_result,
    patch_recvbuf,
)


def _wrk_available() -> bool:
    return shutil.which("wrk") is not None or any(default_cache_dir().glob("wrk-recvbuf*"))


@pytest.mark.skipif(not _wrk_available(), reason="wrk is not installed (make system-deps)")
@pytest.mark.timeout(120)
def test_smoke_run_reports_throughput_for_both_servers(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code = main(
        [
            "--small",
            "--duration", "1",
            "--repeats", "1",
            "--warmup", "0",
            "--connections", "8",
            "--workloads", "W1,W2",
            "--no-build-wrk",
            "--max-other-cpu", "10000",  # a busy CI machine must not double the runtime
            "--work-dir", str(tmp_path / "work"),
            "--json", str(report_path),
        ]
    )  # fmt: skip
    assert code == 0
    report = orjson.loads(report_path.read_bytes())
    servers = ["oca", "nginx"] if nginx_binary() else ["oca"]
    for wl in ("W1", "W2"):
        summary = report["workloads"][wl]["summary"]
        assert sorted(summary) == sorted(servers)
        for name in servers:
            assert summary[name]["req_per_s"]["median"] > 0, (wl, name)
            assert summary[name]["gb_per_s"]["median"] > 0, (wl, name)
            assert summary[name]["errors"] == 0, (wl, name, report["workloads"][wl]["runs"])
        for run in report["workloads"][wl]["runs"]:
            assert run["cpu"]["server_pct"] > 0
            assert not run["cpu"]["workers_changed"]
    assert report["warnings"] == [] or all("stock wrk" in w for w in report["warnings"])
    assert psutil.Process().children(recursive=True) == []


def test_bad_workload_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workloads", "W1,W9"]) == 2
    assert "W9" in capsys.readouterr().err


def test_patch_recvbuf_changes_exactly_the_define() -> None:
    header = "#define RECVBUF  8192\nchar buf[RECVBUF];\n"
    assert patch_recvbuf(header, 262144) == "#define RECVBUF  262144\nchar buf[RECVBUF];\n"
    with pytest.raises(WrkBuildError):
        patch_recvbuf("no such define\n", 262144)


def test_deb_src_mirrors_only_enabled_debian_deb_entries() -> None:
    sources = {
        "debian.sources": (
            "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\n"
            "Suites: bookworm bookworm-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb deb-src\nURIs: http://deb.debian.org/debian-security\n"
            "Suites: bookworm-security\nComponents: main\n"
        ),
        "other.sources": "Types: deb\nURIs: https://example.org/apt\nSuites: x\nComponents: main\n",
        "legacy.list": "deb [arch=amd64 signed-by=/k.gpg] http://ftp.debian.org/debian sid main\n",
    }
    out = debian_deb_src_stanzas(sources)
    assert out.count("Types: deb-src") == 2
    assert "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates" in out
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in out
    assert "URIs: http://ftp.debian.org/debian\nSuites: sid\nComponents: main" in out
    assert "Signed-By: /k.gpg" in out
    assert "example.org" not in out and "debian-security" not in out


def test_parse_result_reads_the_done_hook_line() -> None:
    line = (
        RESULT_MARK + '{"duration_us":2000000,"requests":10,"bytes":20971520,'
        '"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":0},'
        '"latency_us":{"p50":100,"p90":150,"p99":200,"max":300,"mean":110.5}}'
    )
    r = parse_result(f"Running 2s test\n{line}\n")
    assert (r.duration_s, r.requests, r.bytes, r.errors) == (2.0, 10, 20971520, 3)
    assert (r.latency_p50_us, r.latency_p99_us) == (100.0, 200.0)
    with pytest.raises(ValueError):
        parse_result("Running 2s test\n")


def test_nginx_config_matches_the_benchmark_settings(tmp_path: Path) -> None:
    conf = nginx_config(
        workers=2,
        host="127.0.0.1",
        http_port=8080,
        https_port=8443,
        tls=("/c.pem", "/k.pem"),
        root=tmp_path,
        prefix=tmp_path / "nginx",
    )
    for directive in (
        "worker_processes 2;",
        "sendfile on;",
        "tcp_nopush off;",
        "access_log off;",
        "keepalive_requests 1000000;",
        "keepalive_timeout 75;",
        "listen 127.0.0.1:8080 reuseport;",
        "listen 127.0.0.1:8443 ssl reuseport;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_session_cache shared:SSL:10m;",
        f"root {tmp_path};",
    ):
        assert directive in conf
    assert "http2" not in conf
