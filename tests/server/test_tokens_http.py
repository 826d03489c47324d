"""Signed URLs end to end: a running appliance with [auth] keys, tokens in the path.

Every rejection is a 403 whose JSON body names the reason (``token-<reason>``, the
reasons of :mod:`oca.auth.tokens`); key rotation is a config edit plus SIGHUP.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from oca.auth.tokens import signed_path
from tests.appliance import Appliance, fetch, new_key, wait_until, write_tree

A_OBJ = "/titles/a/v720/seg-1.m4s"
B_OBJ = "/titles/b/v720/seg-1.m4s"
FILES = {A_OBJ: b"A" * 3000 + bytes(range(256)), B_OBJ: b"B" * 2000}
A_BODY = FILES[A_OBJ]


def sign(
    app: Appliance,
    path: str,
    *,
    kid: str = "k1",
    ttl: int = 300,
    prefix: str | None = "/titles/a/",
    client: str | None = None,
    secret: str | None = None,
) -> str:
    key = bytes.fromhex(secret if secret is not None else app.keys[kid])
    return signed_path(kid, key, path, int(time.time()) + ttl, prefix=prefix, client=client)


def error_of(body: bytes) -> str:
    return str(orjson.loads(body)["error"])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    root = tmp_path_factory.mktemp("tokens")
    a = Appliance(root, tiers=(("ssd", 1),), keys={"k1": new_key(), "k2": new_key()})
    a.import_tree(write_tree(root / "src", FILES))
    a.start()
    yield a
    a.stop()


def get(app: Appliance, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return fetch(*app.host_port, path, headers)


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize("kid", ["k1", "k2"])
def test_valid_token_is_served(app: Appliance, kid: str) -> None:
    status, _, body = get(app, sign(app, A_OBJ, kid=kid))
    assert (status, body) == (200, A_BODY)


def test_valid_token_serves_ranges(app: Appliance) -> None:
    status, headers, body = get(app, sign(app, A_OBJ), Range="bytes=3000-3009")
    assert status == 206
    assert headers["content-range"] == f"bytes 3000-3009/{len(A_BODY)}"
    assert body == A_BODY[3000:3010]


def test_one_token_covers_the_whole_prefix(app: Appliance) -> None:
    token_path = sign(app, "/titles/a/v720/seg-1.m4s", prefix="/titles/a/")
    token = token_path.split("/")[2]
    # The same token segment in front of another object under the prefix.
    status, _, body = get(app, f"/t/{token}/titles/a/v720/absent.m4s")
    assert (status, error_of(body)) == (404, "not-found")
    status, _, body = get(app, f"/t/{token}{A_OBJ}")
    assert (status, body) == (200, A_BODY)


@pytest.mark.parametrize("client", ["127.0.0.1", "127.0.0.1/32", "127.0.0.0/8"])
def test_token_bound_to_this_client_is_served(app: Appliance, client: str) -> None:
    status, _, body = get(app, sign(app, A_OBJ, client=client))
    assert (status, body) == (200, A_BODY)


def test_internal_endpoints_need_no_token(app: Appliance) -> None:
    assert get(app, "/healthz")[0] == 200
    assert get(app, "/readyz")[0] == 200


# ---------------------------------------------------------------- refused


def test_missing_token_is_403(app: Appliance) -> None:
    status, _, body = get(app, A_OBJ)
    assert (status, error_of(body)) == (403, "token-missing")


def test_forged_signature_is_403(app: Appliance) -> None:
    path = sign(app, A_OBJ)
    token = path.split("/")[2]
    *fields, signature = token.split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    forged = path.replace(token, ".".join([*fields, flipped]))
    status, _, body = get(app, forged)
    assert (status, error_of(body)) == (403, "token-bad-signature")


def test_token_with_altered_claims_is_403(app: Appliance) -> None:
    # A longer expiry pasted into a valid token: the signature no longer matches.
    path = sign(app, A_OBJ, ttl=60)
    token = path.split("/")[2]
    fields = token.split(".")
    fields[2] = str(int(fields[2]) + 86400)
    status, _, body = get(app, path.replace(token, ".".join(fields)))
    assert (status, error_of(body)) == (403, "token-bad-signature")


def test_expired_token_is_403(app: Appliance) -> None:
    status, _, body = get(app, sign(app, A_OBJ, ttl=-10))
    assert (status, error_of(body)) == (403, "token-expired")


def test_token_for_another_prefix_is_403(app: Appliance) -> None:
    token = sign(app, A_OBJ, prefix="/titles/a/").split("/")[2]
    status, _, body = get(app, f"/t/{token}{B_OBJ}")
    assert (status, error_of(body)) == (403, "token-path-not-covered")


def test_token_for_another_client_is_403(app: Appliance) -> None:
    status, _, body = get(app, sign(app, A_OBJ, client="203.0.113.7"))
    assert (status, error_of(body)) == (403, "token-client-mismatch")
    status, _, body = get(app, sign(app, A_OBJ, client="203.0.113.0/24"))
    assert (status, error_of(body)) == (403, "token-client-mismatch")


def test_unknown_key_id_is_403(app: Appliance) -> None:
    status, _, body = get(app, sign(app, A_OBJ, kid="k9", secret=new_key()))
    assert (status, error_of(body)) == (403, "token-unknown-key")


def test_key_id_with_the_wrong_secret_is_403(app: Appliance) -> None:
    status, _, body = get(app, sign(app, A_OBJ, kid="k1", secret=new_key()))
    assert (status, error_of(body)) == (403, "token-bad-signature")


@pytest.mark.parametrize("token", ["garbage", "v1.k1.1.x.~.y", "v2.k1.9999999999.L3RpdGxlcy8.~.x"])
def test_malformed_token_is_403(app: Appliance, token: str) -> None:
    status, _, body = get(app, f"/t/{token}{A_OBJ}")
    assert (status, error_of(body)) == (403, "token-malformed")


def test_head_without_a_token_is_403_without_body(app: Appliance) -> None:
    status, headers, body = fetch(*app.host_port, A_OBJ, method="HEAD")
    assert status == 403
    assert int(headers["content-length"]) > 0
    assert body == b""


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        ("/titles/a/../b/v720/seg-1.m4s", "dot-segment"),
        ("/titles/a/%2e%2e/b/v720/seg-1.m4s", "dot-segment"),
        ("/titles/a/.%2E/b/v720/seg-1.m4s", "dot-segment"),
        ("/titles/a/%2e%2e%2fb/v720/seg-1.m4s", "encoded-slash"),
        ("/titles/a/..%5cb/v720/seg-1.m4s", "backslash"),
        ("/titles/a/%252e%252e/b/v720/seg-1.m4s", "double-encoded"),
        ("/titles/a//../b/v720/seg-1.m4s", "empty-segment"),
    ],
)
def test_traversal_behind_a_valid_token_is_400(app: Appliance, tail: str, reason: str) -> None:
    token = sign(app, A_OBJ, prefix="/titles/a/").split("/")[2]
    status, _, body = get(app, f"/t/{token}{tail}")
    assert (status, error_of(body)) == (400, reason)


def test_access_log_does_not_record_tokens(app: Appliance) -> None:
    path = sign(app, A_OBJ)
    token = path.split("/")[2]
    assert get(app, path)[0] == 200
    log = app.root / "access.log"

    def logged() -> list[dict[str, object]]:
        if not log.exists():
            return []
        lines = [orjson.loads(x) for x in log.read_bytes().splitlines() if x.strip()]
        return [r for r in lines if r.get("path") == f"/t/-{A_OBJ}"]

    wait_until(logged, 5, "the signed request in the access log")
    assert token not in log.read_text()
    # An absolute-form target is refused, and its token is hidden in the log all the same.
    host, port = app.host_port
    absolute = f"http://{host}:{port}{path}"
    assert fetch(host, port, absolute)[0] == 400
    wait_until(
        lambda: any(r.get("path") == f"http://{host}:{port}/t/-{A_OBJ}" for r in logged_all(log)),
        5,
        "the absolute-form request in the access log",
    )
    assert token not in log.read_text()


def logged_all(log: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in log.read_bytes().splitlines() if x.strip()]


# ---------------------------------------------------------------- rotation


def test_key_rotation_by_sighup(tmp_path: Path) -> None:
    old, kept, new = new_key(), new_key(), new_key()
    app = Appliance(tmp_path, workers=2, tiers=(("ssd", 1),), keys={"old": old, "kept": kept})
    app.import_tree(write_tree(tmp_path / "src", FILES))
    app.start()
    try:
        by_old = sign(app, A_OBJ, kid="old")
        by_kept = sign(app, A_OBJ, kid="kept")
        by_new = sign(app, A_OBJ, kid="new", secret=new)
        assert get(app, by_old)[0] == 200
        assert error_of(get(app, by_new)[2]) == "token-unknown-key"

        app.keys = {"kept": kept, "new": new}
        app.write_config()
        assert app.proc is not None
        app.proc.send_signal(signal.SIGHUP)

        def rotated() -> bool:
            # Twenty fresh connections in a row, spread by the kernel over both workers.
            for _ in range(20):
                s_old, _, b_old = get(app, by_old)
                if s_old != 403 or error_of(b_old) != "token-unknown-key":
                    return False
                if get(app, by_new)[0] != 200:
                    return False
            return True

        wait_until(rotated, 15, "both workers to drop key 'old' and accept key 'new'")
        status, _, body = get(app, by_kept)
        assert (status, body) == (200, A_BODY)
        log = app.log_text()
        assert "SIGHUP" in log
        assert "now ['kept', 'new']" in log
    finally:
        app.stop()


# ---------------------------------------------------------------- oca sign


def test_oca_sign_prints_a_url_that_is_served(app: Appliance) -> None:
    out = app.oca(
        "sign", "-c", str(app.config_path), A_OBJ, "--ttl", "60", "--client", "127.0.0.1"
    ).stdout.strip()
    assert out.startswith(app.url + "/t/v1.k1.")
    assert out.endswith(A_OBJ)
    with urllib.request.urlopen(out, timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == A_BODY


def test_oca_sign_for_another_client_is_refused(app: Appliance) -> None:
    out = app.oca(
        "sign", "-c", str(app.config_path), A_OBJ, "--ttl", "60", "--client", "203.0.113.7"
    ).stdout.strip()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(out, timeout=10)
    assert err.value.code == 403
    assert error_of(err.value.read()) == "token-client-mismatch"
