"""Accounts, API keys and sign-in sessions in the history's stores, each test on JSON, SQLite and PostgreSQL.

The stores keep rows only; accounts.py decides what they mean (hashing, who may do what)."""

import pytest

from errors import AccountExists
from history import open_store
from test_history_stores import generation_record, image_record


def user_record(user_id, name, role="user", created_at="2026-11-30T10:00:00.000Z"):
    return {"user_id": user_id, "name": name, "role": role, "password_hash": f"scrypt:hash-of-{name}",
            "created_at": created_at, "password_changed_at": created_at}


def key_record(key_id, user_id, created_at="2026-11-30T11:00:00.000Z"):
    return {"key_id": key_id, "user_id": user_id, "label": f"label {key_id}", "prefix": f"ia_{key_id[:4]}",
            "key_hash": f"{key_id:0>64}", "created_at": created_at, "last_used_at": None}


def session_record(session_hash, user_id):
    return {"session_hash": f"{session_hash:0>64}", "user_id": user_id, "created_at": "2026-11-30T12:00:00.000Z"}


@pytest.fixture
def store(store_target, tmp_path):
    opened = open_store(store_target, str(tmp_path))
    yield opened
    opened.close()


def test_accounts_survive_a_new_store(store_target, tmp_path, store):
    store.add_user(user_record("u1", "ada", "admin"))
    store.add_key(key_record("k1", "u1"))
    store.add_session(session_record("s1", "u1"))
    again = open_store(store_target, str(tmp_path))
    try:
        assert again.user("u1") == user_record("u1", "ada", "admin")
        assert again.user_named("ada") == user_record("u1", "ada", "admin")
        assert again.key_hashed(key_record("k1", "u1")["key_hash"]) == key_record("k1", "u1")
        assert again.session_hashed(session_record("s1", "u1")["session_hash"]) == session_record("s1", "u1")
    finally:
        again.close()


def test_unknown_ids_and_names_find_nothing(store):
    assert store.user("nobody") is None and store.user_named("nobody") is None
    assert store.key_hashed("0" * 64) is None and store.session_hashed("0" * 64) is None
    assert store.delete_key("none") is None
    assert store.set_password("nobody", "scrypt:x", "2026-11-30T13:00:00.000Z") is False
    assert store.delete_user("nobody") is False
    store.touch_key("none", "2026-11-30T13:00:00.000Z")  # nothing to touch: no error
    store.delete_session("0" * 64)


def test_a_taken_name_is_refused_and_changes_nothing(store):
    store.add_user(user_record("u1", "ada"))
    with pytest.raises(AccountExists):
        store.add_user(user_record("u2", "ada"))
    assert [user["user_id"] for user in store.users()] == ["u1"]


def test_users_are_listed_oldest_first(store):
    store.add_user(user_record("u2", "grace", created_at="2026-11-30T10:00:01.000Z"))
    store.add_user(user_record("u1", "ada", created_at="2026-11-30T10:00:00.000Z"))
    assert [user["name"] for user in store.users()] == ["ada", "grace"]


def test_a_new_password_ends_the_accounts_sessions_and_keys_and_no_one_elses(store):
    store.add_user(user_record("u1", "ada"))
    store.add_user(user_record("u2", "grace"))
    for key_id, user_id in (("k1", "u1"), ("k2", "u1"), ("k3", "u2")):
        store.add_key(key_record(key_id, user_id))
    store.add_session(session_record("s1", "u1"))
    store.add_session(session_record("s2", "u2"))
    assert store.set_password("u1", "scrypt:new", "2026-11-30T13:00:00.000Z") is True
    assert store.user("u1")["password_hash"] == "scrypt:new"
    assert store.user("u1")["password_changed_at"] == "2026-11-30T13:00:00.000Z"
    assert store.keys_of("u1") == [] and [key["key_id"] for key in store.keys_of("u2")] == ["k3"]
    assert store.session_hashed(session_record("s1", "u1")["session_hash"]) is None
    assert store.session_hashed(session_record("s2", "u2")["session_hash"]) == session_record("s2", "u2")


def test_deleting_an_account_ends_its_sessions_and_keys_and_keeps_its_records(store):
    store.add_user(user_record("u1", "ada"))
    store.add_key(key_record("k1", "u1"))
    store.add_session(session_record("s1", "u1"))
    store.add_image(image_record("a", owner="u1"))
    assert store.delete_user("u1") is True
    assert store.user("u1") is None and store.user_named("ada") is None
    assert store.key_hashed(key_record("k1", "u1")["key_hash"]) is None
    assert store.session_hashed(session_record("s1", "u1")["session_hash"]) is None
    assert store.image("a")["owner"] == "u1"  # kept, and claimable: it belongs to no account now
    store.add_user(user_record("u9", "ada"))  # the name is free again


def test_keys_are_listed_per_account_oldest_first_revoked_and_touched(store):
    store.add_user(user_record("u1", "ada"))
    store.add_key(key_record("k2", "u1", created_at="2026-11-30T11:00:01.000Z"))
    store.add_key(key_record("k1", "u1", created_at="2026-11-30T11:00:00.000Z"))
    assert [key["key_id"] for key in store.keys_of("u1")] == ["k1", "k2"]
    store.touch_key("k1", "2026-11-30T14:00:00.000Z")
    assert store.key_hashed(key_record("k1", "u1")["key_hash"])["last_used_at"] == "2026-11-30T14:00:00.000Z"
    assert store.delete_key("k2") == key_record("k2", "u1", created_at="2026-11-30T11:00:01.000Z")
    assert [key["key_id"] for key in store.keys_of("u1")] == ["k1"]


def test_a_session_ends(store):
    store.add_user(user_record("u1", "ada"))
    store.add_session(session_record("s1", "u1"))
    store.delete_session(session_record("s1", "u1")["session_hash"])
    assert store.session_hashed(session_record("s1", "u1")["session_hash"]) is None


def test_claim_gives_every_record_of_no_account_to_one_account(store):
    store.add_user(user_record("u1", "ada"))
    store.add_user(user_record("u2", "grace"))
    store.add_image(image_record("anonymous", owner="0f3a-session"))
    store.add_question("anonymous", {"question": "q", "answer": "a", "asked_at": "t1", "owner": "0f3a-session"})
    store.add_question("anonymous", {"question": "q2", "answer": "a", "asked_at": "t2", "owner": "u2"})
    store.add_image(image_record("graces", owner="u2"))
    store.add_generation(generation_record("old", owner="another-session"))
    store.add_generation(generation_record("adas", owner="u1"))
    assert store.claim("u1") == {"images": 1, "generations": 1}
    assert store.image("anonymous")["owner"] == "u1" and store.image("graces")["owner"] == "u2"
    assert [entry["owner"] for entry in store.image("anonymous")["questions"]] == ["u1", "u2"]
    assert store.generation("old")["owner"] == "u1"
    assert store.claim("u1") == {"images": 0, "generations": 0}


def test_generations_since_counts_one_owners_from_a_time_on(store):
    for index, created_at in enumerate(["2026-11-29T09:59:59.999Z", "2026-11-29T10:00:00.000Z",
                                        "2026-11-30T09:00:00.000Z"]):
        store.add_generation(generation_record(f"g{index}", owner="u1", created_at=created_at))
    store.add_generation(generation_record("other", owner="u2", created_at="2026-11-30T09:00:00.000Z"))
    assert store.generations_since("u1", "2026-11-29T10:00:00.000Z") == 2
    assert store.generations_since("u3", "2026-11-29T10:00:00.000Z") == 0
