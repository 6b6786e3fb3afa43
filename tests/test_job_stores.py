"""Batch jobs' rows in the history's stores, each test on JSON, SQLite and PostgreSQL: a job and its items,
claimed, renewed, finished, cancelled and deleted; on PostgreSQL, workers claiming at once; and migration 0004.

The stores keep rows only; jobs.py decides when to claim and what to keep. Times are ISO strings made from
numbers the tests choose (history.iso_time), so that a claim runs out when a test says, without waiting."""

import threading
from contextlib import ExitStack

import pytest
import sqlalchemy as sa
from alembic import command

import history_sql
from errors import NotFound, NotOwner
from history import iso_time, open_store
from history_sql import SqlHistory
from test_account_migration import alembic_on
from test_history_stores import image_record

BASE = 1_800_000_000  # seconds since the epoch: the tests' time 0


def at(seconds: float) -> str:
    """The store's text for a time so many seconds after the tests' time 0."""
    return iso_time(BASE + seconds)


def job_record(job_id, owner="me", created_at=0, total=0, **fields):
    return {"job_id": job_id, "owner": owner, "status": "queued", "prompt": None, "prefix": None, "suffix": None,
            "total": total, "skipped": [], "created_at": at(created_at), "finished_at": None, **fields}


def add(store, job_id, count, owner="me", created_at=0, **fields) -> list[dict]:
    """A new job of count pending items, named <job_id>/<position>.png; its items."""
    items = [{"position": index, "file_name": f"{job_id}/{index}.png", "staged": str(index), "state": "pending"}
             for index in range(count)]
    store.add_job(job_record(job_id, owner, created_at, count, **fields), items)
    return items


def made(item: dict, caption="a caption", error=None) -> dict:
    """The result a worker hands in for a claimed item: a caption with its image, or an error without one."""
    image = None if error else image_record(f"img-{item['job_id']}-{item['position']}", owner=item.get("owner", "me"),
                                            original_name=item["file_name"], caption=caption)
    return {"job_id": item["job_id"], "position": item["position"], "caption": None if error else caption,
            "error": error, "image": image}


def image_id_of(item: dict) -> str:
    return f"img-{item['job_id']}-{item['position']}"


def has_image(store, image_id: str) -> bool:
    try:
        store.image(image_id)
    except NotFound:
        return False
    return True


def positions(items) -> list[int]:
    return [item["position"] for item in items]


def states(store, job_id) -> list[str]:
    found, _ = store.job_items(job_id, 1000, 0)
    return [item["state"] for item in found]


@pytest.fixture
def store(store_target, tmp_path):
    opened = open_store(store_target, str(tmp_path))
    yield opened
    opened.close()


def test_a_job_survives_a_new_store_with_its_fields_and_counts(store_target, tmp_path, store):
    skipped = [{"file_name": "notes.txt", "reason": "not an image"}]
    add(store, "j1", 3, prompt="a picture of", prefix="sks,", suffix="photo", skipped=skipped)
    again = open_store(store_target, str(tmp_path))
    try:
        job = again.job("j1")
        expected = {**job_record("j1", total=3, prompt="a picture of", prefix="sks,", suffix="photo",
                                 skipped=skipped), "done": 0, "failed": 0}
        assert {name: job.get(name) for name in expected} == expected
        assert "items" not in job and job.get("started_at") is None and job.get("last_claimed_at") is None
        items, total = again.job_items("j1", 10, 0)
        assert total == 3 and positions(items) == [0, 1, 2]
        assert [(item["job_id"], item["file_name"], item["staged"], item["state"]) for item in items] == [
            ("j1", f"j1/{index}.png", str(index), "pending") for index in range(3)]
    finally:
        again.close()


def test_unknown_jobs_are_not_found(store):
    with pytest.raises(NotFound) as error:
        store.job("nope")
    assert error.value.code == "job_not_found"
    with pytest.raises(NotFound):
        store.job_items("nope", 10, 0)
    with pytest.raises(NotFound):
        store.cancel_job("nope", "me", at(1))
    with pytest.raises(NotFound):
        store.delete_job("nope", "me")
    assert store.jobs("me", 10, 0) == ([], 0) and store.active_jobs("me") == 0


def test_jobs_are_one_owners_newest_first_paged_with_their_counts(store):
    add(store, "old", 1, created_at=0)
    add(store, "new", 3, created_at=2)
    add(store, "mid", 1, created_at=1)
    add(store, "same-time-later", 1, created_at=1)  # a tie: the one added later comes first
    add(store, "theirs", 1, owner="someone else", created_at=5)
    claimed = store.claim_items("w1", at(10), at(70), 10)
    assert positions(claimed) == [0] and claimed[0]["job_id"] == "old"  # the least recently claimed: none yet
    claimed = store.claim_items("w1", at(11), at(71), 10)
    assert claimed[0]["job_id"] == "new"
    store.finish_items("w1", [made(claimed[0]), made(claimed[1], error="broken")], at(12))
    page, total = store.jobs("me", 2, 0)
    assert total == 4 and [job["job_id"] for job in page] == ["new", "same-time-later"]
    assert (page[0]["done"], page[0]["failed"], page[0]["status"]) == (1, 1, "running")
    page, total = store.jobs("me", 2, 2)
    assert total == 4 and [job["job_id"] for job in page] == ["mid", "old"]
    assert store.jobs("me", 2, 4) == ([], 4)
    assert [job["job_id"] for job in store.jobs("someone else", 10, 0)[0]] == ["theirs"]
    assert store.active_jobs("me") == 4 and store.active_jobs("someone else") == 1
    store.cancel_job("mid", "me", at(13))
    assert store.active_jobs("me") == 3


def test_items_come_in_order_one_page_at_a_time_or_only_those_in_a_state(store):
    add(store, "j1", 5)
    page, total = store.job_items("j1", 2, 1)
    assert total == 5 and positions(page) == [1, 2]
    claimed = store.claim_items("w1", at(1), at(61), 3)
    store.finish_items("w1", [made(claimed[0]), made(claimed[1], error="broken"), made(claimed[2])], at(2))
    done, total = store.job_items("j1", 10, 0, state="done")
    assert total == 2 and positions(done) == [0, 2]
    assert [item["caption"] for item in done] == ["a caption", "a caption"]
    assert [item["image_id"] for item in done] == [image_id_of(claimed[0]), image_id_of(claimed[2])]
    page, total = store.job_items("j1", 1, 1, state="done")
    assert total == 2 and positions(page) == [2]
    failed, total = store.job_items("j1", 10, 0, state="failed")
    assert total == 1 and failed[0]["error"] == "broken" and failed[0].get("image_id") is None
    pending, total = store.job_items("j1", 10, 0, state="pending")
    assert total == 2 and positions(pending) == [3, 4]
    assert store.job_items("j1", 10, 0, state="claimed") == ([], 0)


def test_a_claim_takes_the_first_items_up_to_the_limit_with_their_jobs_fields(store):
    add(store, "j1", 5, owner="u1", prompt="a picture of", prefix="sks,", suffix="photo")
    claimed = store.claim_items("w1", at(10), at(70), 3)
    assert positions(claimed) == [0, 1, 2]
    for item in claimed:
        assert (item["job_id"], item["file_name"], item["staged"]) == ("j1", f"j1/{item['position']}.png",
                                                                       str(item["position"]))
        assert (item["state"], item["claimed_by"], item["claimed_until"]) == ("claimed", "w1", at(70))
        assert (item["owner"], item["prompt"], item["prefix"], item["suffix"]) == ("u1", "a picture of", "sks,",
                                                                                   "photo")
    job = store.job("j1")
    assert (job["status"], job["started_at"], job["last_claimed_at"]) == ("running", at(10), at(10))
    assert positions(store.claim_items("w2", at(11), at(71), 3)) == [3, 4]
    job = store.job("j1")
    assert (job["started_at"], job["last_claimed_at"]) == (at(10), at(11))  # started at the first claim
    assert store.claim_items("w3", at(12), at(72), 3) == []  # every item is claimed, and no claim ran out
    assert states(store, "j1") == ["claimed"] * 5
    page, _ = store.job_items("j1", 10, 0, state="claimed")
    assert [item["claimed_by"] for item in page] == ["w1", "w1", "w1", "w2", "w2"]


def test_jobs_take_turns_the_least_recently_claimed_first(store):
    add(store, "a", 4, created_at=0)
    add(store, "b", 4, created_at=1)
    taken = [store.claim_items("w1", at(10 + turn), at(100), 2) for turn in range(5)]
    assert [(batch[0]["job_id"], positions(batch)) for batch in taken[:4]] == [
        ("a", [0, 1]), ("b", [0, 1]), ("a", [2, 3]), ("b", [2, 3])]
    assert taken[4] == []


def test_nothing_to_claim_is_an_empty_list(store):
    assert store.claim_items("w1", at(0), at(60), 5) == []
    add(store, "cancelled", 2)
    store.cancel_job("cancelled", "me", at(1))
    add(store, "finished", 1)
    store.finish_items("w1", [made(store.claim_items("w1", at(2), at(62), 5)[0])], at(3))
    assert store.job("finished")["status"] == "done"
    assert store.claim_items("w2", at(100), at(160), 5) == []
    assert store.claimed_workers() == set()


def test_an_expired_claim_is_claimed_again_by_another_worker_and_a_live_one_is_not(store):
    add(store, "j1", 3)
    first = store.claim_items("w1", at(0), at(60), 2)
    assert positions(first) == [0, 1]
    assert positions(store.claim_items("w2", at(59), at(119), 5)) == [2]  # w1's claims still hold
    assert store.claim_items("w2", at(60), at(120), 5) == []  # until, not after
    again = store.claim_items("w2", at(61), at(121), 5)
    assert positions(again) == [0, 1] and {item["claimed_by"] for item in again} == {"w2"}
    # w1 comes back with its results too late: refused, and its images not kept.
    assert store.finish_items("w1", [made(item, caption="late") for item in first], at(62)) == []
    assert not has_image(store, image_id_of(first[0])) and not has_image(store, image_id_of(first[1]))
    assert states(store, "j1") == ["claimed"] * 3
    assert store.finish_items("w2", [made(item) for item in again], at(63)) == [("j1", 0), ("j1", 1)]
    assert store.image(image_id_of(again[0]))["caption"] == "a caption"


def test_renewing_extends_only_the_workers_own_claims(store):
    add(store, "j1", 4)
    store.claim_items("w1", at(0), at(60), 2)
    store.claim_items("w2", at(1), at(61), 2)
    assert store.renew_claims("w1", at(120)) == 2
    assert store.renew_claims("nobody", at(120)) == 0
    assert positions(store.claim_items("w3", at(90), at(150), 5)) == [2, 3]  # w2's ran out, w1's renewed
    assert store.claim_items("w3", at(119), at(179), 5) == []
    assert positions(store.claim_items("w3", at(121), at(181), 5)) == [0, 1]


def test_finishing_keeps_each_result_with_its_image_and_settles_the_job(store):
    add(store, "j1", 3, owner="u1")
    claimed = store.claim_items("w1", at(0), at(60), 2)
    kept = store.finish_items("w1", [made(claimed[0]), made(claimed[1], error="not a PNG")], at(5))
    assert kept == [("j1", 0), ("j1", 1)]
    job = store.job("j1")
    assert (job["status"], job.get("finished_at"), job["done"], job["failed"]) == ("running", None, 1, 1)
    image = store.image(image_id_of(claimed[0]))
    assert (image["owner"], image["original_name"], image["caption"]) == ("u1", "j1/0.png", "a caption")
    items, _ = store.job_items("j1", 10, 0)
    assert (items[0]["state"], items[0]["caption"], items[0]["image_id"], items[0]["finished_at"]) == (
        "done", "a caption", image_id_of(claimed[0]), at(5))
    assert (items[1]["state"], items[1]["error"], items[1].get("caption"), items[1].get("image_id")) == (
        "failed", "not a PNG", None, None)
    assert all(item.get("claimed_by") is None and item.get("claimed_until") is None for item in items[:2])
    last = store.claim_items("w1", at(6), at(66), 2)
    assert store.finish_items("w1", [made(last[0])], at(7)) == [("j1", 2)]
    job = store.job("j1")
    assert (job["status"], job["finished_at"], job["done"], job["failed"]) == ("done", at(7), 2, 1)
    assert store.list("images", "u1", 10, 0)[1] == 2


def test_a_job_whose_every_item_failed_is_failed(store):
    add(store, "j1", 2)
    claimed = store.claim_items("w1", at(0), at(60), 2)
    store.finish_items("w1", [made(item, error="broken") for item in claimed], at(1))
    job = store.job("j1")
    assert (job["status"], job["finished_at"], job["done"], job["failed"]) == ("failed", at(1), 0, 2)
    assert store.list("images", "me", 10, 0)[1] == 0


def test_results_the_worker_does_not_hold_are_refused_and_add_no_image(store):
    add(store, "j1", 2)
    claimed = store.claim_items("w1", at(0), at(60), 1)
    unclaimed = {"job_id": "j1", "position": 1, "file_name": "j1/1.png"}
    results = [made(claimed[0]), made(unclaimed), made({"job_id": "j1", "position": 7, "file_name": "x"}),
               made({"job_id": "gone", "position": 0, "file_name": "x"})]
    assert store.finish_items("w2", results[:1], at(1)) == []  # another worker's claim
    assert store.finish_items("w1", results[1:], at(1)) == []  # pending, out of range, no such job
    assert store.list("images", "me", 10, 0) == ([], 0)
    assert states(store, "j1") == ["claimed", "pending"]
    assert store.finish_items("w1", results, at(2)) == [("j1", 0)]
    assert store.finish_items("w1", results[:1], at(3)) == []  # kept once: no second image
    assert store.list("images", "me", 10, 0)[1] == 1


def test_cancelling_stops_what_is_pending_or_claimed_and_keeps_what_is_done(store):
    add(store, "j1", 4)
    claimed = store.claim_items("w1", at(0), at(60), 2)
    store.finish_items("w1", [made(claimed[0])], at(1))
    with pytest.raises(NotOwner):
        store.cancel_job("j1", "someone else", at(2))
    assert store.job("j1")["status"] == "running"
    job = store.cancel_job("j1", "me", at(3))
    assert (job["status"], job["finished_at"], job["done"], job["failed"]) == ("cancelled", at(3), 1, 0)
    items, _ = store.job_items("j1", 10, 0)
    assert [item["state"] for item in items] == ["done", "cancelled", "cancelled", "cancelled"]
    assert all(item.get("claimed_by") is None for item in items)
    # The worker that held item 1 hands its result in after the cancel: refused, its image not added.
    assert store.finish_items("w1", [made(claimed[1])], at(4)) == []
    assert not has_image(store, image_id_of(claimed[1])) and has_image(store, image_id_of(claimed[0]))
    assert store.claim_items("w2", at(100), at(160), 5) == [] and store.claimed_workers() == set()
    again = store.cancel_job("j1", "me", at(5))  # finished: returned as it is
    assert (again["status"], again["finished_at"], again["done"]) == ("cancelled", at(3), 1)


def test_cancelling_a_finished_job_returns_it_unchanged(store):
    add(store, "j1", 1)
    store.finish_items("w1", [made(store.claim_items("w1", at(0), at(60), 1)[0])], at(1))
    job = store.cancel_job("j1", "me", at(2))
    assert (job["status"], job["finished_at"], job["done"]) == ("done", at(1), 1)
    assert states(store, "j1") == ["done"]


def test_deleting_a_finished_job_removes_it_and_the_images_its_items_made_with_their_questions(store):
    add(store, "j1", 3)
    add(store, "other", 1)
    claimed = store.claim_items("w1", at(0), at(60), 3)
    store.finish_items("w1", [made(claimed[0]), made(claimed[1], error="broken"), made(claimed[2])], at(1))
    store.add_question(image_id_of(claimed[0]), {"question": "q", "answer": "a", "asked_at": at(2), "owner": "me"})
    store.add_image(image_record("uploaded"))
    other = store.claim_items("w1", at(3), at(63), 1)
    store.finish_items("w1", [made(other[0])], at(4))
    with pytest.raises(NotOwner):
        store.delete_job("j1", "someone else")
    job, removed = store.delete_job("j1", "me")
    assert (job["job_id"], job["status"], job["done"], job["failed"]) == ("j1", "done", 2, 1)
    assert sorted(image["image_id"] for image in removed) == sorted([image_id_of(claimed[0]),
                                                                   image_id_of(claimed[2])])
    assert all(image["filename"] == f"{image['image_id']}.png" for image in removed)  # what the caller removes
    with pytest.raises(NotFound):
        store.job("j1")
    with pytest.raises(NotFound):
        store.job_items("j1", 10, 0)
    assert not has_image(store, image_id_of(claimed[0])) and not has_image(store, image_id_of(claimed[2]))
    assert has_image(store, "uploaded") and has_image(store, image_id_of(other[0]))
    assert [job["job_id"] for job in store.jobs("me", 10, 0)[0]] == ["other"]
    store.add_image(image_record(image_id_of(claimed[0])))  # the id is free again, and its thread went with it
    assert store.image(image_id_of(claimed[0]))["questions"] == []


def test_an_active_job_is_not_deleted(store):
    add(store, "j1", 2)
    claimed = store.claim_items("w1", at(0), at(60), 1)
    store.finish_items("w1", [made(claimed[0])], at(1))
    job, removed = store.delete_job("j1", "me")
    assert (job["status"], removed) == ("running", [])
    assert store.job("j1")["done"] == 1 and has_image(store, image_id_of(claimed[0]))
    with pytest.raises(NotOwner):
        store.delete_job("j1", "someone else")


def test_the_claims_of_workers_known_to_be_gone_are_given_back(store):
    add(store, "a", 3)
    add(store, "b", 2)
    assert [item["job_id"] for item in store.claim_items("w1", at(0), at(600), 3)] == ["a"] * 3
    assert [item["job_id"] for item in store.claim_items("w2", at(1), at(600), 3)] == ["b"] * 2
    assert store.claimed_workers() == {"w1", "w2"}
    assert store.release_claims(set()) == 0
    assert store.release_claims({"w1", "w9"}) == 3
    assert store.claimed_workers() == {"w2"}
    items, _ = store.job_items("a", 10, 0)
    assert all((item["state"], item.get("claimed_by"), item.get("claimed_until")) == ("pending", None, None)
               for item in items)
    assert positions(store.claim_items("w3", at(2), at(62), 5)) == [0, 1, 2]  # long before w1's claim ran out
    assert store.claimed_workers() == {"w2", "w3"}


def test_clearing_an_owners_history_removes_their_jobs_and_no_one_elses(store):
    add(store, "mine", 2)
    add(store, "theirs", 2, owner="someone else")
    store.claim_items("w1", at(0), at(60), 5)
    store.clear("me")
    assert store.jobs("me", 10, 0) == ([], 0)
    with pytest.raises(NotFound):
        store.job("mine")
    with pytest.raises(NotFound):
        store.job_items("mine", 10, 0)
    assert store.job("theirs")["total"] == 2 and store.job_items("theirs", 10, 0)[1] == 2
    assert store.active_jobs("someone else") == 1


def test_workers_claiming_at_once_take_each_item_exactly_once(database_url, tmp_path):
    """PostgreSQL's SKIP LOCKED, and SQLite's UPDATE that checks again what its SELECT chose."""
    with ExitStack() as stack:
        first = open_store(database_url, str(tmp_path))
        stack.callback(first.close)
        add(first, "j1", 200)
        stores = [first] + [open_store(database_url, str(tmp_path)) for _ in range(7)]
        for opened in stores[1:]:
            stack.callback(opened.close)
        claimed: dict[int, list[tuple]] = {index: [] for index in range(8)}
        failures = []
        start = threading.Barrier(8)

        def claim_all(index: int) -> None:
            try:
                start.wait(30)
                while batch := stores[index].claim_items(f"worker-{index}", at(0), at(600), 3):
                    assert len(batch) <= 3 and all(item["claimed_by"] == f"worker-{index}" for item in batch)
                    claimed[index] += [(item["job_id"], item["position"]) for item in batch]
            except BaseException as error:  # reported by the test's thread
                failures.append(error)

        threads = [threading.Thread(target=claim_all, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads) and failures == []
        everything = [taken for batch in claimed.values() for taken in batch]
        assert len(everything) == len(set(everything)) == 200
        assert set(everything) == {("j1", position) for position in range(200)}
        if database_url.startswith("postgresql"):  # SQLite's writers take turns: one may well take every batch
            assert sum(1 for batch in claimed.values() if batch) > 1  # they did claim together
        page, total = first.job_items("j1", 1000, 0, state="claimed")
        assert total == 200
        owners = {(item["job_id"], item["position"]): item["claimed_by"] for item in page}
        assert all(owners[taken] == f"worker-{index}" for index, batch in claimed.items() for taken in batch)


# Migration 0004 (batch jobs) on a history made before jobs existed, on SQLite and PostgreSQL.


def history_before_jobs(url: str, root: str) -> None:
    """A database at schema 0003 holding one image (with its digest) and a question about it."""
    with alembic_on(url, root) as (config, connection):
        command.upgrade(config, "0003")
        connection.execute(history_sql.images.insert(), [history_sql.row("images", image_record(
            "old", owner="u1", original_name="cat.png", content_sha256="c" * 64))])
        connection.execute(history_sql.questions.insert(), [history_sql.question_row(
            "old", {"question": "q", "answer": "a", "asked_at": "t", "owner": "u1"})])


def test_a_history_from_before_jobs_is_upgraded_and_keeps_its_images(database_url, tmp_path):
    history_before_jobs(database_url, str(tmp_path))
    store = SqlHistory(database_url, str(tmp_path))  # upgrades to the newest
    try:
        with store.engine.connect() as connection:
            assert {"jobs", "job_items"} <= set(sa.inspect(connection).get_table_names())
        old = store.image("old")
        assert (old["owner"], old["original_name"], old["content_sha256"]) == ("u1", "cat.png", "c" * 64)
        assert [entry["question"] for entry in old["questions"]] == ["q"]
        add(store, "j1", 2, owner="u1")
        claimed = store.claim_items("w1", at(0), at(60), 2)
        assert store.finish_items("w1", [made(item) for item in claimed], at(1)) == [("j1", 0), ("j1", 1)]
        assert store.list("images", "u1", 10, 0)[1] == 3
    finally:
        store.close()


def test_the_jobs_migration_downgrades_to_the_history_alone_and_upgrades_again(database_url, tmp_path):
    history_before_jobs(database_url, str(tmp_path))
    SqlHistory(database_url, str(tmp_path)).close()
    with alembic_on(database_url, str(tmp_path)) as (config, connection):
        command.downgrade(config, "0003")
        tables = set(sa.inspect(connection).get_table_names())
        assert {"jobs", "job_items"}.isdisjoint(tables) and {"images", "questions", "users"} <= tables
        assert connection.execute(sa.select(history_sql.images.c.image_id)).scalars().all() == ["old"]
    store = SqlHistory(database_url, str(tmp_path))  # upgrades to the newest again
    try:
        add(store, "j1", 1, owner="u1")
        assert store.job("j1")["total"] == 1 and store.image("old")["owner"] == "u1"
    finally:
        store.close()


def test_a_job_past_max_active_is_not_kept(store):
    items = [{"position": 0, "file_name": "a.png", "staged": "0", "state": "pending"}]
    assert store.add_job(job_record("j1", total=1), items, max_active=2)
    assert store.add_job(job_record("j2", total=1), items, max_active=2)
    assert not store.add_job(job_record("j3", total=1), items, max_active=2)
    assert store.add_job(job_record("other", owner="someone else", total=1), items, max_active=2)
    with pytest.raises(NotFound):
        store.job("j3")
    store.cancel_job("j1", "me", at(1))
    assert store.add_job(job_record("j4", total=1), items, max_active=2)  # a finished job leaves room
    assert store.add_job(job_record("j5", total=1), items)  # 0: no limit
