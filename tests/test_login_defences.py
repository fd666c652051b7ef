"""Password logins under attack (issue 17): back-off, lock-out, audited failures, bounded hashing.

Each test is an attack that succeeded before these defences; all run on SQLite and PostgreSQL
(the throttle state is in the database, shared by every server process).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

from sqlalchemy import select

from server.extensions import db
from server.models import AuditLog, PersonRole

PASSWORD = "the right password"
WRONG = "a wrong password"


def _add(app: Any, username: str, role: PersonRole = PersonRole.TECHNICIAN) -> None:
    from server.auth import create_person

    with app.app_context():
        session = db.write_session()
        create_person(session, username, PASSWORD, role)
        session.commit()


def _login(client: Any, username: str, password: str, address: str = "192.0.2.10") -> Any:
    return client.post("/api/v1/auth/login", json={"username": username, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def _audit(app: Any, prefix: str = "login") -> list[tuple[str, str, dict[str, Any]]]:
    with app.app_context():
        rows = db.session.execute(select(AuditLog.action, AuditLog.target, AuditLog.detail)
                                  .where(AuditLog.action.startswith(prefix)).order_by(AuditLog.id)).all()
    return [(a, t, json.loads(d)) for a, t, d in rows]


# ----------------------------------------------------------------------------- the attacks, over HTTP only


def test_forty_wrong_passwords_then_the_right_one_is_refused(app, client):
    """Before: 40 wrong passwords in a few seconds, then the right one logged in."""
    _add(app, "victim")
    codes = [_login(client, "victim", f"{WRONG} {i}").status_code for i in range(40)]
    assert codes[:3] == [401, 401, 401]  # a few typing mistakes cost nothing
    assert 429 in codes  # then the attempts are slowed down
    r = _login(client, "victim", PASSWORD)
    assert r.status_code == 429, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] in ("login_throttled", "login_locked") and int(r.headers["Retry-After"]) >= 1
    assert "token" not in r.get_json()


def test_a_throttled_attempt_is_refused_with_retry_after_without_checking_the_password(app, client):
    _add(app, "slow")
    for i in range(3):
        assert _login(client, "slow", f"{WRONG} {i}").status_code == 401
    assert _login(client, "slow", f"{WRONG} 3").status_code == 401  # the 4th is checked and sets 1 s of back-off
    r = _login(client, "slow", PASSWORD)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "login_throttled"
    assert r.headers["Retry-After"] == "1"


def test_every_failed_login_is_audited_with_the_name_tried_and_the_address(app, client):
    _add(app, "known")
    assert _login(client, "known", WRONG, "198.51.100.7").status_code == 401
    hostile = "ev\u202eil\x1b[2J\u200bname"  # right-to-left override, ESC, zero-width space
    assert _login(client, hostile, WRONG, "203.0.113.5").status_code == 401
    rows = _audit(app, "login.failed")
    assert len(rows) == 2
    (_a1, target1, d1), (_a2, target2, d2) = rows
    assert target1.startswith("person:") and d1["username"] == "known" and d1["address"] == "198.51.100.7"
    assert d2["address"] == "203.0.113.5" and target2.startswith("username:")
    assert d2["username"] == "ev\\u202eil\\u001b[2J\\u200bname"  # readable, nothing an admin's terminal obeys
    assert all(ch.isprintable() for ch in d2["username"] + target2)


def test_the_lock_out_is_audited_refuses_the_right_password_and_an_admin_lifts_it(app, world):
    _add(app, "locked")
    app.config.update(LOGIN_FREE_FAILURES=100, LOGIN_LOCKOUT_FAILURES=5)  # no back-off: reach the lock fast
    c = world.client
    assert [_login(c, "locked", WRONG).status_code for _ in range(5)] == [401] * 5
    r = _login(c, "locked", PASSWORD)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "login_locked"
    assert int(r.headers["Retry-After"]) > 60
    locks = _audit(app, "login.locked")
    assert len(locks) == 1 and locks[0][2]["username"] == "locked" and locks[0][2]["failures"] == 5
    # An admin unlocks; audited; the right password works again.
    assert c.post("/api/v1/people/locked/unlock", headers=world.auth()).status_code == 200
    assert _audit(app, "login.unlock")[0][1].startswith("person:")
    assert _login(c, "locked", PASSWORD).status_code == 200


def test_one_address_trying_many_names_is_slowed_down(app, client):
    """Password spraying: one wrong guess each for many names, from one address."""
    app.config.update(LOGIN_ADDRESS_FREE_FAILURES=5)
    codes = [_login(client, f"user{i}", WRONG, "203.0.113.9").status_code for i in range(8)]
    assert codes[:5] == [401] * 5 and 429 in codes[5:]
    assert _login(client, "someone-else", WRONG, "192.0.2.99").status_code == 401  # other addresses unaffected


def test_the_auditor_form_is_throttled_too(app, client):
    _add(app, "formuser", PersonRole.AUDITOR)
    from tests.audit_login import form_login

    for i in range(4):
        assert form_login(client, "formuser", f"{WRONG} {i}").status_code == 401
    r = form_login(client, "formuser", PASSWORD)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert "huma_audit=" not in " ".join(r.headers.getlist("Set-Cookie"))
    assert "Try again in 1 seconds" in r.get_data(as_text=True) or "Coba lagi dalam 1 detik" in r.get_data(as_text=True)


def test_parallel_logins_hash_at_most_the_configured_number_at_once(app, live_server, monkeypatch):
    """Before: 16 parallel logins ran 8 scrypt hashes at once (every waitress thread) and stalled the server."""
    import server.auth as auth

    app.config.update(LOGIN_HASH_CONCURRENCY=2, LOGIN_HASH_WAIT=0.3, LOGIN_FREE_FAILURES=100,
                      LOGIN_ADDRESS_FREE_FAILURES=100)
    _add(app, "many")
    real, running, peak, lock = auth.check_password_hash, [0], [0], threading.Lock()

    def slow_check(stored: str, password: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            return real(stored, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(auth, "check_password_hash", slow_check)
    body = json.dumps({"username": "many", "password": PASSWORD}).encode()
    results: list[tuple[int, dict[str, str]]] = []

    def one() -> None:
        status, _r, headers, _d = live_server.request("POST", "/api/v1/auth/login", body,
                                                      {"Content-Type": "application/json"})
        results.append((status, headers))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2, f"{peak[0]} password hashes ran at once"
    statuses = sorted(s for s, _h in results)
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert all(h.get("Retry-After") for s, h in results if s == 503)


def test_no_database_write_lock_is_held_while_a_password_is_hashed(app, client, db_url, monkeypatch):
    """Before: on SQLite the login's write transaction (BEGIN IMMEDIATE) spanned the scrypt hash, so
    every upload and decision waited for each login (and 16 logins queued for seconds)."""
    import server.auth as auth
    from server.db import make_engine

    _add(app, "writer")
    real, blocked = auth.check_password_hash, []
    other = make_engine(db_url, busy_timeout_s=0.05)

    def check_and_write(stored: str, password: str) -> bool:
        try:
            with other.begin() as conn:  # another process writing meanwhile
                conn.exec_driver_sql("UPDATE people SET disabled = disabled WHERE username = 'writer'")
        except Exception as exc:
            blocked.append(repr(exc))
        return real(stored, password)

    monkeypatch.setattr(auth, "check_password_hash", check_and_write)
    try:
        assert _login(client, "writer", PASSWORD).status_code == 200
        assert _login(client, "writer", WRONG).status_code == 401
    finally:
        other.dispose()
    assert blocked == []


# ----------------------------------------------------------------------------- time and policy


def test_the_lock_ends_by_itself_and_a_quiet_window_forgives(app, client, monkeypatch):
    import server.logins as logins

    _add(app, "patient")
    app.config.update(LOGIN_FREE_FAILURES=100, LOGIN_LOCKOUT_FAILURES=3)
    clock = [dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)]
    monkeypatch.setattr(logins, "utcnow", lambda: clock[0])
    for _ in range(2):
        assert _login(client, "patient", WRONG).status_code == 401
    clock[0] += dt.timedelta(seconds=app.config["LOGIN_WINDOW"] + 1)  # quiet for a whole window: count restarts
    for _ in range(2):
        assert _login(client, "patient", WRONG).status_code == 401
    assert _login(client, "patient", PASSWORD).status_code == 200  # 4 failures, never 3 within the window
    for _ in range(3):
        assert _login(client, "patient", WRONG).status_code == 401
    assert _login(client, "patient", PASSWORD).status_code == 429
    clock[0] += dt.timedelta(seconds=app.config["LOGIN_LOCKOUT"] - 1)
    assert _login(client, "patient", PASSWORD).status_code == 429
    clock[0] += dt.timedelta(seconds=2)
    assert _login(client, "patient", PASSWORD).status_code == 200


def test_back_off_doubles_and_is_capped(app):
    from server.logins import LoginPolicy

    policy = LoginPolicy.from_config(app.config)
    delays = [policy.delay(n, policy.free_failures) for n in range(1, 15)]
    assert delays[:policy.free_failures] == [0.0] * policy.free_failures
    assert delays[policy.free_failures:policy.free_failures + 4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == policy.backoff_max


def test_success_resets_the_account_but_not_the_address(app, client):
    from server.logins import LoginThrottle, account_key, address_key

    _add(app, "mixed")
    app.config.update(LOGIN_ADDRESS_FREE_FAILURES=10)
    for i in range(2):
        assert _login(client, "mixed", f"{WRONG} {i}", "192.0.2.50").status_code == 401
    assert _login(client, "mixed", PASSWORD, "192.0.2.50").status_code == 200
    with app.app_context():
        assert db.session.get(LoginThrottle, account_key("mixed")) is None
        assert db.session.get(LoginThrottle, address_key("192.0.2.50")).failures == 2


def test_ipv6_clients_are_throttled_per_slash_64():
    from server.logins import address_key

    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "address:2001:db8:1:2::/64"
    assert address_key("203.0.113.9") == "address:203.0.113.9"
    assert address_key("not an address\x1b") == "address:not an address\\u001b"
