"""Batch jobs' rows in the JSON history: a job and its items, claimed, finished and cancelled in one write each.

The records (the same in the database, history_sql_jobs):
- a job: {job_id, owner, status (queued, running, done, cancelled, failed), prompt, prefix, suffix, total,
  skipped ({file_name, reason} of the first entries that were not taken), skipped_count (all of them),
  created_at, started_at (the first claim),
  finished_at, last_claimed_at};
- an item: {job_id, position (0..total-1), file_name (its path in the folder, "/" between parts), staged (its
  file in JOBS_FOLDER/<job_id>/), state (pending, claimed, done, failed, cancelled), claimed_by, claimed_until,
  caption (prefix and suffix included), error, image_id, finished_at}.
A worker claims items for a while (claimed_until); an item whose claim ran out is claimed again by anyone,
so a worker that died leaves its items to the others. finish_items keeps a result only while its claim is
the finisher's, in the same write as the image record it made: no item is captioned into the history twice.
In the JSON file, a job's items are a list inside the job's record.
"""

from __future__ import annotations

import copy

from errors import NotFound, NotOwner

ACTIVE = ("queued", "running")
JOB = {"job_id": str, "owner": str, "status": str, "total": int, "skipped": list, "created_at": str, "items": list}
JOB_OPTIONAL = {"prompt": str, "prefix": str, "suffix": str, "skipped_count": int, "started_at": str,
                "finished_at": str, "last_claimed_at": str}
ITEM = {"position": int, "file_name": str, "staged": str, "state": str}
ITEM_FIELDS = ("job_id", "position", "file_name", "staged", "state", "claimed_by", "claimed_until", "caption",
               "error", "image_id", "finished_at")  # as the stores hand an item out, absent ones None


def is_job(record) -> bool:
    """Whether a job record has every field the app reads, of the right type."""
    return (isinstance(record, dict) and all(isinstance(record.get(name), kind) for name, kind in JOB.items())
            and all(record.get(name) is None or isinstance(record[name], kind) for name, kind in JOB_OPTIONAL.items())
            and all(isinstance(item, dict) and all(isinstance(item.get(name), kind) for name, kind in ITEM.items())
                    for item in record["items"]))


def job_not_found(job_id: str) -> NotFound:
    """The refusal of a job id that does not exist (or, with accounts, is another's)."""
    return NotFound(f"no job with id '{job_id}': check the id, or list yours with GET /jobs", code="job_not_found")


def not_owner() -> NotOwner:
    return NotOwner("this job was started in another session: only that session may cancel or delete it")


def counted(job: dict, items: list[dict]) -> dict:
    """A job without its items, with how many are done and failed, and when the newest of them finished."""
    shown = {name: copy.deepcopy(value) for name, value in job.items() if name != "items"}
    shown["done"] = sum(1 for item in items if item["state"] == "done")
    shown["failed"] = sum(1 for item in items if item["state"] == "failed")
    return shown


def item_view(job_id: str, item: dict) -> dict:
    """An item with its job's id, every field there (None where not set), as the stores hand it out."""
    return {name: item.get(name) for name in ITEM_FIELDS} | {"job_id": job_id}


def settled_status(items: list[dict]) -> str | None:
    """A job's status once no item waits or runs: done, or failed when not one item was captioned; else None."""
    if any(item["state"] in ("pending", "claimed") for item in items):
        return None
    return "done" if any(item["state"] == "done" for item in items) else "failed"


def owned(data: dict, job_id: str, owner: str) -> dict:
    """The owner's job in the data about to be written; NotFound, NotOwner."""
    record = data["jobs"].get(job_id)
    if record is None:
        raise job_not_found(job_id)
    if record["owner"] != owner:
        raise not_owner()
    return record


def claimable(item: dict, now: str) -> bool:
    """Whether an item may be claimed at a time: pending, or claimed by a worker whose claim has run out."""
    return item["state"] == "pending" or (item["state"] == "claimed" and item["claimed_until"] < now)


class JobsInFile:
    """The jobs' part of history.History (which provides _read and _change)."""

    def add_job(self, job: dict, items: list[dict], max_active: int = 0) -> bool:
        """Keep a new job with its items; False, keeping nothing, when its owner has max_active jobs queued or
        running already (0: no limit), counted in the same write."""
        record = {**job, "items": [dict(item) for item in items]}

        def add(data):
            if max_active and sum(1 for other in data["jobs"].values()
                                  if other["owner"] == job["owner"] and other["status"] in ACTIVE) >= max_active:
                return False
            data["jobs"][job["job_id"]] = record
            return True

        return self._change(add)

    def job(self, job_id: str) -> dict:
        """One job with its counts (done, failed), without its items; NotFound if there is none."""
        record = self._read()["jobs"].get(job_id)
        if record is None:
            raise job_not_found(job_id)
        return counted(record, record["items"])

    def jobs(self, owner: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """An owner's jobs, newest first, one page of them, and how many in all."""
        mine = [record for record in self._read()["jobs"].values() if record["owner"] == owner]
        mine.reverse()
        mine.sort(key=lambda record: record["created_at"], reverse=True)
        return [counted(record, record["items"]) for record in mine[offset : offset + limit]], len(mine)

    def active_jobs(self, owner: str) -> int:
        """How many of an owner's jobs are queued or running."""
        return sum(1 for record in self._read()["jobs"].values()
                   if record["owner"] == owner and record["status"] in ACTIVE)

    def job_items(self, job_id: str, limit: int, offset: int, state: str | None = None) -> tuple[list[dict], int]:
        """A job's items in order (only those in a state, if given), one page of them, and how many in all."""
        record = self._read()["jobs"].get(job_id)
        if record is None:
            raise job_not_found(job_id)
        chosen = [item for item in record["items"] if state is None or item["state"] == state]
        return [item_view(job_id, dict(item)) for item in chosen[offset : offset + limit]], len(chosen)

    def claim_items(self, worker: str, now: str, until: str, limit: int) -> list[dict]:
        """Claim up to limit items of one job for worker until a time: pending ones, or those whose claim ran out.

        The job claimed from least recently comes first, so that jobs take turns. Each item comes with its
        job's owner, prompt, prefix and suffix. [] when no job has an item to claim.
        """
        if not any(claimable(item, now) for record in self._read()["jobs"].values() if record["status"] in ACTIVE
                   for item in record["items"]):
            return []  # a worker asks every few seconds: no write for nothing

        def claim(data):
            active = [record for record in data["jobs"].values() if record["status"] in ACTIVE]
            active.sort(key=lambda record: record.get("last_claimed_at") or "")
            for record in active:
                chosen = [index for index, item in enumerate(record["items"]) if claimable(item, now)][:limit]
                if not chosen:
                    continue
                items = list(record["items"])
                for index in chosen:
                    items[index] = {**items[index], "state": "claimed", "claimed_by": worker, "claimed_until": until}
                data["jobs"][record["job_id"]] = {**record, "items": items, "status": "running",
                                                  "last_claimed_at": now,
                                                  "started_at": record.get("started_at") or now}
                return [{**item_view(record["job_id"], items[index]), "owner": record["owner"],
                         "prompt": record.get("prompt"), "prefix": record.get("prefix"),
                         "suffix": record.get("suffix")} for index in chosen]
            return []

        return self._change(claim)

    def renew_claims(self, worker: str, until: str) -> int:
        """Extend the worker's claims to a new time (its heartbeat); how many it holds."""

        def renew(data):
            renewed = 0
            for job_id, record in list(data["jobs"].items()):
                mine = [item for item in record["items"] if item["state"] == "claimed" and item["claimed_by"] == worker]
                if mine:
                    renewed += len(mine)
                    data["jobs"][job_id] = {**record, "items": [
                        {**item, "claimed_until": until} if item in mine else item for item in record["items"]]}
            return renewed

        return self._change(renew)

    def claimed_workers(self) -> set[str]:
        """The workers that hold claims now."""
        return {item["claimed_by"] for record in self._read()["jobs"].values() for item in record["items"]
                if item["state"] == "claimed"}

    def release_claims(self, workers: set[str]) -> int:
        """Give back the items these workers claimed (workers known to have died); how many."""

        def release(data):
            released = 0
            for job_id, record in list(data["jobs"].items()):
                theirs = [index for index, item in enumerate(record["items"])
                          if item["state"] == "claimed" and item["claimed_by"] in workers]
                if theirs:
                    items = list(record["items"])
                    for index in theirs:
                        items[index] = {**items[index], "state": "pending", "claimed_by": None, "claimed_until": None}
                    data["jobs"][job_id] = {**record, "items": items}
                    released += len(theirs)
            return released

        return self._change(release)

    def finish_items(self, worker: str, results: list[dict], now: str) -> list[tuple[str, int]]:
        """Keep results of the worker's claimed items, with the images they made, in one write.

        A result is {job_id, position, caption (or None), error (or None), image (its image record, or None)}.
        Only results whose item the worker still holds are kept; returns those (job_id, position). A job whose
        items are all finished becomes done (failed if none was captioned), with finished_at.
        """

        def finish(data):
            kept = []
            for result in results:
                record = data["jobs"].get(result["job_id"])
                if record is None or not 0 <= result["position"] < len(record["items"]):
                    continue
                item = record["items"][result["position"]]
                if item["state"] != "claimed" or item["claimed_by"] != worker:
                    continue
                image = result.get("image")
                if image is not None:
                    data["images"][image["image_id"]] = image
                items = list(record["items"])
                items[result["position"]] = {
                    **item, "state": "failed" if result["error"] else "done", "caption": result["caption"],
                    "error": result["error"], "image_id": image and image["image_id"], "finished_at": now,
                    "claimed_by": None, "claimed_until": None}
                data["jobs"][result["job_id"]] = {**record, "items": items}
                kept.append((result["job_id"], result["position"]))
            for job_id in {job_id for job_id, _ in kept}:
                record = data["jobs"][job_id]
                status = settled_status(record["items"])
                if status and record["status"] in ACTIVE:
                    data["jobs"][job_id] = {**record, "status": status, "finished_at": now}
            return kept

        return self._change(finish)

    def cancel_job(self, job_id: str, owner: str, now: str) -> dict:
        """Stop a queued or running job of the owner's: the items not finished are cancelled, those finished kept.

        Returns the job (with its counts); NotFound, NotOwner. A job already finished is returned as it is.
        """

        def cancel(data):
            record = owned(data, job_id, owner)
            if record["status"] in ACTIVE:
                items = [{**item, "state": "cancelled", "claimed_by": None, "claimed_until": None}
                         if item["state"] in ("pending", "claimed") else item for item in record["items"]]
                record = {**record, "items": items, "status": "cancelled", "finished_at": now}
                data["jobs"][job_id] = record
            return counted(record, record["items"])

        return self._change(cancel)

    def delete_job(self, job_id: str, owner: str) -> tuple[dict, list[dict]]:
        """Remove a finished job of the owner's with the images its items made; return the job and those images.

        NotFound, NotOwner; a job still queued or running is returned with no change and no images (cancel it
        first).
        """

        def delete(data):
            record = owned(data, job_id, owner)
            if record["status"] in ACTIVE:
                return counted(record, record["items"]), []
            del data["jobs"][job_id]
            made = [data["images"].pop(item["image_id"]) for item in record["items"]
                    if item.get("image_id") and item["image_id"] in data["images"]]
            return counted(record, record["items"]), made

        return self._change(delete)
