"""Sessions: CSRF tokens masked anew on every page (a compressed page never repeats the secret), end listeners,
and a look at a session that does not count as its use."""

from __future__ import annotations

import time

from gateway.webkit.sessions import SessionStore, mask_token, token_matches


def test_a_masked_token_is_new_text_each_time_and_still_matches() -> None:
    token = "k3Y_" * 10
    masked = {mask_token(token) for _ in range(5)}
    assert len(masked) == 5 and token not in "".join(masked)
    assert all(token_matches(text, token) for text in masked)
    assert token_matches(token, token)  # as it is, too
    other = mask_token("x" * len(token))
    for forged in (other, "", "forged", masked.pop()[:-4], "A" * 200, "%%%%", "\u00e9" * 10):
        assert not token_matches(forged, token), forged


def test_ending_a_session_tells_its_listeners_and_peeking_does_not_keep_it_alive() -> None:
    store = SessionStore(idle_timeout=60)
    ended: list[str] = []
    store.on_end(ended.append)
    sid, session = store.create("ann")
    other, _ = store.create("ann")
    store.end(sid)
    store.end(sid)  # twice: told once
    assert ended == [sid]
    session = store.get(other)  # type: ignore[assignment]
    assert session is not None
    session.last_seen = time.time() - 59
    assert store.peek(other) is session and session.last_seen < time.time() - 58
    session.last_seen = time.time() - 61
    assert store.peek(other) is None and ended == [sid, other]  # timed out: its streams end too
    third, _ = store.create("bob")
    store.end_user("bob")
    assert ended[-1] == third
