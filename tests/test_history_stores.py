"""The history's stores, each test on all three backends: JSON, SQLite and a real PostgreSQL server."""

import threading

import pytest

from conftest import BACKENDS
from errors import NotFound, NotOwner
from history import open_store


def image_record(image_id, owner="me", created_at="2026-11-25T10:00:00.000Z", **fields):
    return {"image_id": image_id, "owner": owner, "filename": f"{image_id}.png", "original_name": None,
            "mime_type": "image/png", "prompt": None, "caption": f"caption of {image_id}", "created_at": created_at,
            "questions": [], **fields}


def generation_record(generation_id, owner="me", created_at="2026-11-25T10:00:00.000Z"):
    return {"generation_id": generation_id, "owner": owner, "filename": f"{generation_id}.png",
            "mime_type": "image/png", "description": "a lighthouse",
            "parameters": {"width": 768, "height": 512, "guidance_scale": 7.5, "negative_prompt": "fog"},
            "provider": "hf-inference", "created_at": created_at}


@pytest.fixture
def stores(tmp_path):
    """Open stores by target; each is closed at the end."""
    opened = []

    def open_(target):
        store = open_store(target, str(tmp_path))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(stores, store_target):
    return stores(store_target)


def test_records_survive_a_new_store(stores, store_target):
    stores(store_target).add_image(image_record("a", prompt="a picture of", original_name="cat.png"))
    stores(store_target).add_question("a", {"question": "q", "answer": "x", "asked_at": "t1", "owner": "me"})
    stores(store_target).add_generation(generation_record("g"))
    again = stores(store_target)
    assert again.image("a") == image_record("a", prompt="a picture of", original_name="cat.png", questions=[
        {"question": "q", "answer": "x", "asked_at": "t1", "owner": "me"}])
    assert again.generation("g") == generation_record("g")
    assert list(again.generation("g")["parameters"]) == ["width", "height", "guidance_scale", "negative_prompt"]


def test_a_page_is_one_owners_newest_first(store):
    for index in range(6):
        store.add_image(image_record(str(index), owner="me" if index != 2 else "someone else"))
    store.add_image(image_record("older", created_at="2026-11-24T10:00:00.000Z"))
    page, total = store.list("images", "me", limit=3, offset=1)
    assert total == 6
    assert [record["image_id"] for record in page] == ["4", "3", "1"]  # same times: the later added first
    last, _ = store.list("images", "me", limit=10, offset=4)
    assert [record["image_id"] for record in last] == ["0", "older"]
    assert store.list("images", "nobody", 10, 0) == ([], 0)


def test_a_thread_grows_and_comes_back_with_its_image(store):
    store.add_image(image_record("a"))
    store.add_image(image_record("b"))
    first = store.add_question("a", {"question": "one?", "answer": "1", "asked_at": "t1", "owner": "me"})
    second = store.add_question("a", {"question": "two?", "answer": "2", "asked_at": "t2", "owner": "you"})
    old = store.add_question("a", {"question": "old?", "answer": "3", "asked_at": "t3"})  # before sessions were kept
    assert [entry["question"] for entry in first["questions"]] == ["one?"]
    assert [entry["question"] for entry in second["questions"]] == ["one?", "two?"]
    assert old["questions"][2] == {"question": "old?", "answer": "3", "asked_at": "t3"}
    assert store.image("a") == old
    assert store.list("images", "me", 10, 0)[0][1]["questions"] == old["questions"]
    assert store.image("b")["questions"] == []


def test_unknown_ids_are_not_found(store):
    store.add_image(image_record("a"))
    for call, code in [(lambda: store.image("nope"), "image_not_found"),
                       (lambda: store.generation("nope"), "generation_not_found"),
                       (lambda: store.add_question("nope", {"question": "q", "answer": "a", "asked_at": "t"}),
                        "image_not_found"),
                       (lambda: store.delete("images", "nope", "me"), "image_not_found")]:
        with pytest.raises(NotFound) as raised:
            call()
        assert raised.value.code == code


def test_only_the_owner_deletes_and_the_thread_goes_too(store):
    store.add_image(image_record("a"))
    store.add_question("a", {"question": "q", "answer": "x", "asked_at": "t", "owner": "someone else"})
    store.add_generation(generation_record("g"))
    with pytest.raises(NotOwner):
        store.delete("images", "a", "someone else")
    removed = store.delete("images", "a", "me")
    assert removed["image_id"] == "a" and len(removed["questions"]) == 1
    assert store.delete("generations", "g", "me")["generation_id"] == "g"
    with pytest.raises(NotFound):
        store.image("a")
    store.add_image(image_record("a"))  # the same id again starts with no thread
    assert store.image("a")["questions"] == []


def test_clear_removes_one_owners_records_only(store):
    store.add_image(image_record("mine"))
    store.add_image(image_record("theirs", owner="them"))
    store.add_question("theirs", {"question": "q", "answer": "x", "asked_at": "t", "owner": "me"})
    store.add_generation(generation_record("g"))
    store.add_generation(generation_record("h", owner="them"))
    removed = store.clear("me")
    assert sorted(record.get("image_id") or record["generation_id"] for record in removed) == ["g", "mine"]
    assert store.filenames() == {"theirs.png", "h.png"}
    assert store.image("theirs")["questions"][0]["question"] == "q"


def test_questions_asked_at_once_are_all_kept(store):
    store.add_image(image_record("a"))

    def ask(worker):
        for index in range(10):
            store.add_question("a", {"question": f"{worker}-{index}", "answer": "x", "asked_at": "t", "owner": "me"})

    askers = [threading.Thread(target=ask, args=(worker,)) for worker in range(6)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(60)
    asked = [entry["question"] for entry in store.image("a")["questions"]]
    assert sorted(asked) == sorted(f"{worker}-{index}" for worker in range(6) for index in range(10))
    for worker in range(6):  # each asker's questions in the order it asked them
        assert [q for q in asked if q.startswith(f"{worker}-")] == [f"{worker}-{index}" for index in range(10)]


@pytest.mark.parametrize("source_kind", BACKENDS)
def test_records_copy_to_every_other_store_and_again_changes_nothing(stores, store_target, source_kind, tmp_path,
                                                                     request):
    targets = {"json": str(tmp_path / "source.json"), "sqlite": f"sqlite:///{tmp_path}/source.db"}
    source_target = targets.get(source_kind) or request.getfixturevalue("postgres_server").create_database()
    source, dest = stores(source_target), stores(store_target)
    for index in range(5):
        source.add_image(image_record(f"i{index}", owner=f"o{index % 2}", created_at=f"2026-11-25T10:0{index}:00.000Z"))
    source.add_question("i1", {"question": "q", "answer": "x", "asked_at": "t", "owner": "o1"})
    source.add_question("i1", {"question": "old", "answer": "y", "asked_at": "t0"})
    source.add_generation(generation_record("g", owner="o0"))
    dest.add_image(image_record("i3", caption="an older copy"))
    dest.add_image(image_record("only-in-dest"))

    assert dest.merge(source.all_records()) == {"new": 5, "replaced": 1}
    assert dest.merge(source.all_records()) == {"new": 0, "replaced": 6}
    copied = dict((record.get("image_id") or record["generation_id"], record) for _, record in dest.all_records())
    for kind, record in source.all_records():
        assert copied[record.get("image_id") or record["generation_id"]] == record
    assert copied["only-in-dest"] == image_record("only-in-dest")
    assert [record["image_id"] for record in dest.list("images", "o1", 10, 0)[0]] == ["i3", "i1"]


def test_an_image_is_found_by_the_digest_of_its_bytes_as_sent_for_its_owner_only(store):
    store.add_image(image_record("old", content_sha256="a" * 64, created_at="2026-11-25T10:00:00.000Z"))
    store.add_image(image_record("new", content_sha256="a" * 64, created_at="2026-11-25T11:00:00.000Z"))
    store.add_image(image_record("theirs", owner="someone else", content_sha256="b" * 64))
    store.add_image(image_record("unknown"))  # kept before digests were
    store.add_question("new", {"question": "q", "answer": "x", "asked_at": "t1", "owner": "me"})
    found = store.image_with_content("me", "a" * 64)
    assert found["image_id"] == "new" and found["questions"][0]["question"] == "q"
    assert store.image_with_content("me", "b" * 64) is None
    assert "content_sha256" not in store.image("unknown")
