import json
import logging
import multiprocessing
import os

import pytest

from errors import NotFound
from history import History


def image_record(image_id, owner="me"):
    return {"image_id": image_id, "owner": owner, "filename": f"{image_id}.png", "mime_type": "image/png",
            "caption": "c", "created_at": "2026-11-25T10:00:00.000Z", "questions": []}


def generation_record(generation_id, owner="me"):
    return {"generation_id": generation_id, "owner": owner, "filename": f"{generation_id}.png",
            "mime_type": "image/png", "description": "d", "parameters": {}, "created_at": "2026-11-25T10:00:00.000Z"}


def test_records_survive_a_new_store(tmp_path):
    path = tmp_path / "history.json"
    History(str(path)).add_image(image_record("a"))
    History(str(path)).add_question("a", {"question": "q", "answer": "x", "asked_at": "t"})
    again = History(str(path))
    assert again.image("a")["questions"] == [{"question": "q", "answer": "x", "asked_at": "t"}]


def test_list_is_per_owner_newest_first_and_paged(tmp_path):
    history = History(str(tmp_path / "history.json"))
    for index in range(5):
        history.add_image(image_record(str(index), owner="me" if index != 2 else "someone else"))
    page, total = history.list("images", "me", limit=2, offset=1)
    assert total == 4
    assert [record["image_id"] for record in page] == ["3", "1"]


def test_unknown_ids_are_not_found(tmp_path):
    history = History(str(tmp_path / "history.json"))
    with pytest.raises(NotFound):
        history.image("nope")
    with pytest.raises(NotFound):
        history.add_question("nope", {"question": "q"})
    with pytest.raises(NotFound):
        history.generation("nope")
    assert not (tmp_path / "history.json").exists()


def test_returned_records_are_copies(tmp_path):
    history = History(str(tmp_path / "history.json"))
    history.add_image(image_record("a"))
    history.image("a")["questions"].append("changed")
    assert history.image("a")["questions"] == []


def test_an_unreadable_file_is_moved_aside_not_overwritten(tmp_path, caplog):
    path = tmp_path / "history.json"
    path.write_text('{"images": {"a": ')
    with caplog.at_level(logging.WARNING):
        history = History(str(path))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("history.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == '{"images": {"a": '
    assert any("moved it to" in record.getMessage() for record in caplog.records)
    history.add_image(image_record("b"))
    assert list(json.loads(path.read_text())["images"]) == ["b"]


def test_a_file_of_the_wrong_shape_is_moved_aside(tmp_path):
    path = tmp_path / "history.json"
    path.write_text("[1, 2, 3]")
    History(str(path))
    assert not path.exists()
    assert any(p.name.startswith("history.json.corrupt-") for p in tmp_path.iterdir())


def test_leftover_temporary_files_are_removed(tmp_path):
    leftover = tmp_path / ".history.json.tmp-abc123"
    leftover.write_text("{half")
    History(str(tmp_path / "history.json"))
    assert not leftover.exists()


def test_every_write_leaves_only_the_file(tmp_path):
    history = History(str(tmp_path / "history.json"))
    history.add_image(image_record("a"))
    history.add_generation(generation_record("g"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "history.json.lock"]
    data = json.loads((tmp_path / "history.json").read_text())
    assert list(data["images"]) == ["a"] and list(data["generations"]) == ["g"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    history = History(str(path))
    history.add_image(image_record("a"))
    before = path.read_text()

    def broken_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        history.add_image(image_record("b"))
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "history.json.lock"]
    with pytest.raises(NotFound):
        History(str(path)).image("b")


def append_many(path, prefix, count):
    history = History(path)
    for index in range(count):
        history.add_image(image_record(f"{prefix}-{index}"))
        history.add_question(f"{prefix}-{index}", {"question": prefix, "answer": str(index), "asked_at": "t"})


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "history.json")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=append_many, args=(path, name, 40)) for name in ("p1", "p2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    data = json.loads(open(path).read())
    assert len(data["images"]) == 80
    assert all(len(record["questions"]) == 1 for record in data["images"].values())
