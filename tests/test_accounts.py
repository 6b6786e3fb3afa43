"""Identity (accounts.py) over the JSON store, and its commands (`flask --app app users|keys ...`).

The stores' rows are tested on every backend in test_account_stores.py."""

import json
from datetime import timedelta

import pytest

from accounts import KEY_PREFIX, Accounts, account_name, hashed
from errors import AccountExists, InvalidInput, NotFound
from history import History

PASSWORD = "correct horse battery staple"


class Clock:
    """Seconds that move only when told to."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def identity(tmp_path, clock):
    return Accounts(History(str(tmp_path / "history.json")), clock=clock)


def test_names_are_kept_in_lower_case_and_checked():
    assert account_name("  Ada.Lovelace@example.org ") == "ada.lovelace@example.org"
    for bad in ("", "-ada", "a" * 65, "ada lovelace", "ada/../x", "Ådа"):
        with pytest.raises(InvalidInput) as refused:
            account_name(bad)
        assert refused.value.code == "invalid_account_name"


def test_a_password_is_12_to_1024_characters(identity):
    with pytest.raises(InvalidInput, match="at least 12 characters"):
        identity.create_user("ada", "short")
    with pytest.raises(InvalidInput, match="at most 1024"):
        identity.create_user("ada", "x" * 1025)
    assert identity.users() == []


def test_a_password_is_kept_only_as_a_memory_hard_hash(identity, tmp_path):
    user = identity.create_user("Ada", PASSWORD, "admin")
    assert user["name"] == "ada" and user["role"] == "admin" and "password_hash" not in user
    text = (tmp_path / "history.json").read_text()
    assert PASSWORD not in text
    [row] = json.loads(text)["users"].values()
    assert row["password_hash"].startswith("scrypt:")


def test_sign_in_checks_the_password_and_never_says_whether_the_name_exists(identity):
    identity.create_user("ada", PASSWORD)
    assert identity.authenticate("ADA", PASSWORD)["name"] == "ada"
    assert identity.authenticate("ada", PASSWORD + "!") is None
    assert identity.authenticate("grace", PASSWORD) is None
    assert identity.authenticate("not a name", PASSWORD) is None
    assert identity.authenticate("ada", "x" * 5000) is None


def test_a_taken_name_is_refused(identity):
    identity.create_user("ada", PASSWORD)
    with pytest.raises(AccountExists):
        identity.create_user("ADA", PASSWORD)


def test_an_api_key_is_random_shown_once_and_kept_as_a_hash(identity, tmp_path):
    user = identity.create_user("ada", PASSWORD)
    record, key = identity.create_key(user["user_id"], "laptop")
    other_record, other_key = identity.create_key(user["user_id"], "script")
    assert key.startswith(KEY_PREFIX) and len(key) >= len(KEY_PREFIX) + 43 and key != other_key  # 32 random bytes
    assert record["prefix"] == key[: len(record["prefix"])] and len(record["prefix"]) < 12
    assert set(record) == {"key_id", "label", "prefix", "created_at", "last_used_at"}
    text = (tmp_path / "history.json").read_text()
    assert key not in text and hashed(key) in text
    assert identity.user_for_key(key)["user_id"] == user["user_id"]
    assert [k["label"] for k in identity.keys(user["user_id"])] == ["laptop", "script"]


def test_a_wrong_or_revoked_key_signs_in_no_one(identity):
    user = identity.create_user("ada", PASSWORD)
    record, key = identity.create_key(user["user_id"])
    for wrong in (key[:-1], key + "x", "Bearer " + key, "", KEY_PREFIX, key.upper(), "ia_" + "x" * 300):
        assert identity.user_for_key(wrong) is None
    assert identity.revoke_key(record["key_id"]) is True
    assert identity.user_for_key(key) is None
    assert identity.revoke_key(record["key_id"]) is False


def test_an_account_revokes_only_its_own_keys(identity):
    ada, grace = identity.create_user("ada", PASSWORD), identity.create_user("grace", PASSWORD)
    record, key = identity.create_key(ada["user_id"])
    assert identity.revoke_key(record["key_id"], grace["user_id"]) is False
    assert identity.user_for_key(key)["name"] == "ada"
    assert identity.revoke_key(record["key_id"], ada["user_id"]) is True


def test_a_keys_use_is_noted_at_most_once_a_minute(identity, clock):
    user = identity.create_user("ada", PASSWORD)
    record, key = identity.create_key(user["user_id"])
    identity.user_for_key(key)
    first = identity.keys(user["user_id"])[0]["last_used_at"]
    assert first is not None
    clock.now += 30
    identity.user_for_key(key)
    assert identity.keys(user["user_id"])[0]["last_used_at"] == first
    clock.now += 31
    identity.user_for_key(key)
    assert identity.keys(user["user_id"])[0]["last_used_at"] > first


def test_a_session_ends_on_the_server_and_after_its_lifetime(tmp_path, clock):
    identity = Accounts(History(str(tmp_path / "history.json")), session_lifetime=timedelta(hours=1), clock=clock)
    user = identity.create_user("ada", PASSWORD)
    token = identity.start_session(user["user_id"])
    assert token not in (tmp_path / "history.json").read_text()
    assert identity.user_for_session(token)["name"] == "ada"
    identity.end_session(token)
    assert identity.user_for_session(token) is None  # a copy of the old cookie no longer works
    token = identity.start_session(user["user_id"])
    clock.now += 3601
    assert identity.user_for_session(token) is None
    assert identity.user_for_session("") is None and identity.user_for_session("x" * 500) is None


def test_a_new_password_or_a_deleted_account_ends_its_sessions_and_keys(identity):
    ada = identity.create_user("ada", PASSWORD)
    token = identity.start_session(ada["user_id"])
    _, key = identity.create_key(ada["user_id"])
    identity.set_password("ada", PASSWORD + " again")
    assert identity.user_for_session(token) is None and identity.user_for_key(key) is None
    assert identity.authenticate("ada", PASSWORD) is None
    assert identity.authenticate("ada", PASSWORD + " again")["name"] == "ada"
    token = identity.start_session(ada["user_id"])
    _, key = identity.create_key(ada["user_id"])
    identity.delete_user("ada")
    assert identity.user_for_session(token) is None and identity.user_for_key(key) is None
    with pytest.raises(NotFound):
        identity.set_password("ada", PASSWORD)


# The commands, through the flask command's runner, on the app's own store.

def run(app, *args, input=None):
    return app.test_cli_runner().invoke(args=list(args), input=input)


def test_the_first_admin_is_made_from_the_command_line(make_app, tmp_path):
    app = make_app()
    result = run(app, "users", "create", "Ada", "--admin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "created the admin account 'ada'" in result.output and PASSWORD not in result.output
    listed = run(app, "users", "list")
    assert listed.output.startswith("ada\tadmin\t")
    refused = run(app, "users", "create", "grace", input="short\n")
    assert refused.exit_code == 1 and "at least 12 characters" in refused.output
    assert "grace" not in run(app, "users", "list").output


def test_a_key_is_printed_alone_on_the_last_line_and_listed_by_its_first_characters(make_app):
    app = make_app()
    run(app, "users", "create", "ada", input=PASSWORD + "\n")
    made = run(app, "keys", "create", "ada", "--label", "curl")
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key.startswith(KEY_PREFIX)
    listed = run(app, "keys", "list", "ada")
    assert key not in listed.output and key[:9] in listed.output and "\tcurl\t" in listed.output
    key_id = listed.output.split("\t")[0]
    assert run(app, "keys", "revoke", key_id).exit_code == 0
    assert run(app, "keys", "list", "ada").output == ""
    gone = run(app, "keys", "revoke", key_id)
    assert gone.exit_code == 1 and "no API key with id" in gone.output


def test_password_delete_and_claim_from_the_command_line(make_app):
    app = make_app()
    run(app, "users", "create", "ada", input=PASSWORD + "\n")
    app.extensions["history"].add_image({
        "image_id": "old", "owner": "a-session-from-before", "filename": "old.png", "original_name": None,
        "mime_type": "image/png", "prompt": None, "caption": "a cat", "created_at": "2026-11-01T10:00:00.000Z",
        "questions": []})
    claimed = run(app, "users", "claim", "ada")
    assert claimed.exit_code == 0 and "gave 1 images and 0 generations to 'ada'" in claimed.output
    assert run(app, "users", "password", "ada", input=PASSWORD + " two\n").exit_code == 0
    unknown = run(app, "users", "password", "nobody", input=PASSWORD + "\n")
    assert unknown.exit_code == 1 and "no account named 'nobody'" in unknown.output
    assert run(app, "users", "delete", "ada").exit_code == 0
    assert run(app, "users", "list").output == ""


def test_spaces_are_part_of_a_password_and_control_characters_are_refused(identity):
    identity.create_user("ada", "  spaced password  ")
    assert identity.authenticate("ada", "  spaced password  ")["name"] == "ada"
    assert identity.authenticate("ada", "spaced password") is None
    with pytest.raises(InvalidInput, match="control characters"):
        identity.create_user("grace", "bell\x07in a password")
