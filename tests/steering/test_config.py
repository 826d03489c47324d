"""steering.toml validation: errors name the dotted key; environment overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from steering.config import SteeringConfigError, load_steering_config

KEY = "ab" * 32


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    p = tmp_path / "steering.toml"
    p.write_text(text)
    return load_steering_config(p, env=env or {})


def test_defaults_and_a_small_file(tmp_path: Path) -> None:
    cfg = load_steering_config(None, env={})
    assert cfg.ranking.max_results == 10 and cfg.service.listen == ("127.0.0.1:8090",)
    cfg2 = load(tmp_path, f'[urls]\nkeys = [{{ id = "k1", secret = "{KEY}" }}]\n')
    assert cfg2.urls.keys[0].id == "k1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("[ranking]\nmax_result = 3\n", "ranking.max_result", "unknown key"),
        ("[ranking]\nmax_results = 0\n", "ranking.max_results", "must be >= 1"),
        ("[ranking]\noverload_threshold = 'x'\n", "ranking.overload_threshold", "number"),
        ('[urls]\nbind_client = "nope"\n', "urls.bind_client", "must be one of"),
        ('[urls]\nkeys = [{ id = "k", secret = "zz" }]\n', "urls.keys[0].secret", "hex"),
        ('[urls]\nkeys = [{ id = "k", secret = "abcd" }]\n', "urls.keys[0].secret", "32 bytes"),
        ('[urls]\nsigning_key_id = "k9"\n', "urls.signing_key_id", "names no key"),
        ('[service]\ntrusted_proxies = ["10.0.0.0/33"]\n', "service.trusted_proxies[0]", ""),
        ('[service]\nlisten = ["nowhere"]\n', "service.listen[0]", "host:port"),
        ('[service]\npublic_url = "steer"\n', "service.public_url", "http(s) URL"),
        ('[[fill.boosts]]\nrequests_per_day = 5\n', "fill.boosts[0].title", "required"),
    ],
)  # fmt: skip
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, detail: str) -> None:
    with pytest.raises(SteeringConfigError) as err:
        load(tmp_path, text)
    assert err.value.key == key and detail in err.value.detail


def test_environment_overrides(tmp_path: Path) -> None:
    cfg = load(tmp_path, "", env={"OCA_STEERING_RANKING__MAX_RESULTS": "4"})
    assert cfg.ranking.max_results == 4  # type: ignore[attr-defined]


def test_cli_reports_a_bad_file_and_masks_secrets(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ranking\n")
    run = subprocess.run([sys.executable, "-m", "oca", "steering", "-c", str(bad)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2 and "not valid TOML" in run.stderr
    good = tmp_path / "good.toml"
    good.write_text(f'[urls]\nkeys = [{{ id = "k1", secret = "{KEY}" }}]\n')
    cmd = [sys.executable, "-m", "oca", "steering", "-c", str(good), "--print-config"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and KEY not in run.stdout and "<redacted>" in run.stdout
