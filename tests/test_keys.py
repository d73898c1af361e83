"""`tailor keys list / revoke / rotate` against a real `tailor serve`: a revoked key stops
working on the server at once, though the server had it cached (issue 15, finding 8)."""

from __future__ import annotations

import time

import httpx
from conftest import TailorServer
from spec import assert_error_envelope


def key_id_of(server: TailorServer, project: str) -> list[list[str]]:
    lines = server.cli("keys", "list", "--project", project).stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "PROJECT", "KEY"], lines
    return [line.split() for line in lines[1:]]


def status_of(server: TailorServer, key: str) -> int:
    return httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def first_401_within(server: TailorServer, key: str, seconds: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if status_of(server, key) == 401:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_list_shows_keys_without_the_secret(server: TailorServer) -> None:
    key = server.create_key("keys-list")
    rows = key_id_of(server, "keys-list")
    assert len(rows) == 1
    key_id, project, shown = rows[0][:3]
    assert key_id.startswith("key_") and project == "keys-list"
    assert key.startswith(shown.rstrip("…")) and key not in server.cli("keys", "list").stdout
    assert rows[0][-1] == "-", "not revoked"


def test_a_revoked_key_stops_working_within_a_second(server: TailorServer) -> None:
    key = server.create_key("keys-revoke")
    other = server.create_key("keys-revoke")
    assert status_of(server, key) == 200  # now in the server's cache of verified keys
    doomed = next(row[0] for row in key_id_of(server, "keys-revoke") if key.startswith(row[2].rstrip("…")))
    assert server.cli("keys", "revoke", doomed).stdout.strip() == f"revoked {doomed}"
    took = first_401_within(server, key, 1.0)
    assert took is not None, "the revoked key still worked a second later"
    resp = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert_error_envelope(resp, 401)
    assert status_of(server, other) == 200, "the project's other key still works"
    revoked = {row[0]: row[-1] != "-" for row in key_id_of(server, "keys-revoke")}
    assert revoked.pop(doomed) is True and list(revoked.values()) == [False], revoked


def test_rotate_prints_a_new_key_and_revokes_the_old(server: TailorServer) -> None:
    old = server.create_key("keys-rotate")
    assert status_of(server, old) == 200
    (old_id, *_rest) = key_id_of(server, "keys-rotate")[0]
    new = server.cli("keys", "rotate", old_id).stdout.strip()
    assert new.startswith("sk-tailor-") and new != old
    assert first_401_within(server, old, 1.0) is not None
    assert status_of(server, new) == 200
    rows = key_id_of(server, "keys-rotate")
    assert len(rows) == 2


def test_revoking_an_unknown_key_says_so(server: TailorServer) -> None:
    result = server.cli("keys", "revoke", "key_nope", check=False)
    assert result.returncode != 0 and "no key with id key_nope" in result.stderr
