"""Batch jobs' rows in the database: the same records and answers as the JSON store's (history_jobs).

Replicas on one PostgreSQL caption one job's items together. An item is claimed with
`SELECT ... FOR UPDATE SKIP LOCKED` (https://www.postgresql.org/docs/current/sql-select.html#SQL-FOR-UPDATE-SHARE):
two replicas claiming at once each skip the rows the other has locked, so no item is handed out twice and
none waits. That is the queue; no queue library is used because the items are rows of the history itself, and
an item's result must be kept in the same transaction as the image row it makes, which a queue in other tables
or another service could not join. SQLite has no row locks and ignores FOR UPDATE, and its SELECT
runs before the write begins; so every UPDATE here repeats the condition it was chosen by (still claimable,
still the worker's) and claim_items hands out only the rows its own UPDATE changed (RETURNING).
Every transaction that changes both tables changes job_items first and jobs last, so that a cancel and
the replicas' claims never wait for each other in a circle (a deadlock, which PostgreSQL would end by
failing one of them).
"""

from __future__ import annotations

import sqlalchemy as sa

from history_jobs import ACTIVE, ITEM_FIELDS, job_not_found, not_owner
from history_tables import images, job_items, jobs, questions, record, row

JOB_FIELDS = ("job_id", "owner", "status", "prompt", "prefix", "suffix", "total", "skipped", "skipped_count",
              "created_at",
              "started_at", "finished_at", "last_claimed_at")


class JobsInDatabase:
    """The jobs' part of history_sql.SqlHistory (which provides _transaction and _connection)."""

    def add_job(self, job: dict, items: list[dict], max_active: int = 0) -> bool:
        """Keep a new job with its items; False, keeping nothing, when its owner has max_active jobs queued or
        running already (0: no limit), counted in the same transaction (on PostgreSQL under a lock of the
        owner's, so that jobs sent at once by one owner are counted one after the other)."""
        with self._transaction() as db:
            if max_active:
                if db.dialect.name == "postgresql":
                    db.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(job["owner"]))))
                active = db.execute(sa.select(sa.func.count()).select_from(jobs).where(
                    jobs.c.owner == job["owner"], jobs.c.status.in_(ACTIVE))).scalar()
                if active >= max_active:
                    return False
            db.execute(jobs.insert(), [{name: job.get(name) for name in JOB_FIELDS} | {
                "skipped_count": job.get("skipped_count", len(job["skipped"]))}])
            for start in range(0, len(items), 1000):
                db.execute(job_items.insert(), [{name: item.get(name) for name in ITEM_FIELDS}
                                                | {"job_id": job["job_id"]} for item in items[start : start + 1000]])
        return True

    def job(self, job_id: str) -> dict:
        """One job with its counts (done, failed), without its items; NotFound if there is none."""
        with self._connection() as db:
            found = job_rows(db, [job_id])
        if not found:
            raise job_not_found(job_id)
        return found[0]

    def jobs(self, owner: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """An owner's jobs, newest first, one page of them, and how many in all."""
        page = (sa.select(jobs.c.job_id).where(jobs.c.owner == owner)
                .order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit).offset(offset))
        with self._connection() as db:
            ids = list(db.execute(page).scalars())
            total = db.execute(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.owner == owner)).scalar()
            found = {job["job_id"]: job for job in job_rows(db, ids)}
        return [found[job_id] for job_id in ids if job_id in found], total

    def active_jobs(self, owner: str) -> int:
        """How many of an owner's jobs are queued or running."""
        with self._connection() as db:
            return db.execute(sa.select(sa.func.count()).select_from(jobs)
                              .where(jobs.c.owner == owner, jobs.c.status.in_(ACTIVE))).scalar()

    def job_items(self, job_id: str, limit: int, offset: int, state: str | None = None) -> tuple[list[dict], int]:
        """A job's items in order (only those in a state, if given), one page of them, and how many in all."""
        where = [job_items.c.job_id == job_id] + ([job_items.c.state == state] if state else [])
        with self._connection() as db:
            if db.execute(sa.select(jobs.c.id).where(jobs.c.job_id == job_id)).first() is None:
                raise job_not_found(job_id)
            rows = db.execute(sa.select(*[job_items.c[name] for name in ITEM_FIELDS]).where(*where)
                              .order_by(job_items.c.position).limit(limit).offset(offset)).mappings()
            items = [dict(found) for found in rows]
            total = db.execute(sa.select(sa.func.count()).select_from(job_items).where(*where)).scalar()
        return items, total

    def claim_items(self, worker: str, now: str, until: str, limit: int) -> list[dict]:
        """Claim up to limit items of one job for worker until a time: pending ones, or those whose claim ran out.

        The job claimed from least recently comes first, so that jobs take turns. Each item comes with its
        job's owner, prompt, prefix and suffix. [] when no job has an item to claim.
        """
        claimable = sa.or_(job_items.c.state == "pending",
                           sa.and_(job_items.c.state == "claimed", job_items.c.claimed_until < now))
        with self._transaction() as db:
            candidates = db.execute(sa.select(jobs.c.job_id, jobs.c.owner, jobs.c.prompt, jobs.c.prefix, jobs.c.suffix)
                                    .where(jobs.c.status.in_(ACTIVE))
                                    .order_by(jobs.c.last_claimed_at.asc().nulls_first(), jobs.c.id)).all()
            for job in candidates:
                found = db.execute(sa.select(*[job_items.c[name] for name in ITEM_FIELDS], job_items.c.id)
                                   .where(job_items.c.job_id == job.job_id, claimable)
                                   .order_by(job_items.c.position).limit(limit)
                                   .with_for_update(skip_locked=True)).mappings().all()
                if not found:
                    continue
                taken = set(db.execute(job_items.update().where(job_items.c.id.in_([one["id"] for one in found]),
                                                                claimable).values(
                    state="claimed", claimed_by=worker, claimed_until=until).returning(job_items.c.id)).scalars())
                if not taken:
                    continue
                db.execute(jobs.update().where(jobs.c.job_id == job.job_id, jobs.c.status.in_(ACTIVE))
                           .values(status="running", last_claimed_at=now,
                                   started_at=sa.func.coalesce(jobs.c.started_at, now)))
                return [{**{name: one[name] for name in ITEM_FIELDS}, "state": "claimed", "claimed_by": worker,
                         "claimed_until": until, "owner": job.owner, "prompt": job.prompt, "prefix": job.prefix,
                         "suffix": job.suffix} for one in found if one["id"] in taken]
        return []

    def renew_claims(self, worker: str, until: str) -> int:
        """Extend the worker's claims to a new time (its heartbeat); how many it holds."""
        with self._transaction() as db:
            return db.execute(job_items.update().where(job_items.c.state == "claimed",
                                                       job_items.c.claimed_by == worker)
                              .values(claimed_until=until)).rowcount

    def claimed_workers(self) -> set[str]:
        """The workers that hold claims now."""
        with self._connection() as db:
            return set(db.execute(sa.select(job_items.c.claimed_by).distinct()
                                  .where(job_items.c.state == "claimed")).scalars())

    def release_claims(self, workers: set[str]) -> int:
        """Give back the items these workers claimed (workers known to have died); how many."""
        with self._transaction() as db:
            return db.execute(job_items.update().where(job_items.c.state == "claimed",
                                                       job_items.c.claimed_by.in_(workers))
                              .values(state="pending", claimed_by=None, claimed_until=None)).rowcount

    def finish_items(self, worker: str, results: list[dict], now: str) -> list[tuple[str, int]]:
        """Keep results of the worker's claimed items, with the images they made, in one transaction.

        A result is {job_id, position, caption (or None), error (or None), image (its image record, or None)}.
        Only results whose item the worker still holds are kept; returns those (job_id, position). A job whose
        items are all finished becomes done (failed if none was captioned), with finished_at.
        """
        kept = []
        with self._transaction() as db:
            for result in results:
                image = result.get("image")
                changed = db.execute(job_items.update().where(
                    job_items.c.job_id == result["job_id"], job_items.c.position == result["position"],
                    job_items.c.state == "claimed", job_items.c.claimed_by == worker).values(
                    state="failed" if result["error"] else "done", caption=result["caption"], error=result["error"],
                    image_id=image and image["image_id"], finished_at=now, claimed_by=None, claimed_until=None))
                if changed.rowcount != 1:
                    continue
                if image is not None:
                    db.execute(images.insert(), [row("images", image)])
                kept.append((result["job_id"], result["position"]))
            for job_id in {job_id for job_id, _ in kept}:
                states = dict(db.execute(sa.select(job_items.c.state, sa.func.count()).where(
                    job_items.c.job_id == job_id).group_by(job_items.c.state)).all())
                if states.get("pending") or states.get("claimed"):
                    continue
                db.execute(jobs.update().where(jobs.c.job_id == job_id, jobs.c.status.in_(ACTIVE)).values(
                    status="done" if states.get("done") else "failed", finished_at=now))
        return kept

    def cancel_job(self, job_id: str, owner: str, now: str) -> dict:
        """Stop a queued or running job of the owner's: the items not finished are cancelled, those finished kept.

        Returns the job (with its counts); NotFound, NotOwner. A job already finished is returned as it is.
        """
        with self._transaction() as db:
            found = db.execute(sa.select(jobs.c.owner, jobs.c.status).where(jobs.c.job_id == job_id)).first()
            if found is None:
                raise job_not_found(job_id)
            if found.owner != owner:
                raise not_owner()
            if found.status in ACTIVE:  # the items first, then the job: the order claims and finishes take
                db.execute(job_items.update().where(job_items.c.job_id == job_id,
                                                    job_items.c.state.in_(("pending", "claimed")))
                           .values(state="cancelled", claimed_by=None, claimed_until=None))
                db.execute(jobs.update().where(jobs.c.job_id == job_id, jobs.c.status.in_(ACTIVE))
                           .values(status="cancelled", finished_at=now))
            return job_rows(db, [job_id])[0]

    def delete_job(self, job_id: str, owner: str) -> tuple[dict, list[dict]]:
        """Remove a finished job of the owner's with the images its items made; return the job and those images.

        NotFound, NotOwner; a job still queued or running is returned with no change and no images (cancel it
        first).
        """
        with self._transaction() as db:
            found = job_rows(db, [job_id], lock=True)
            if not found:
                raise job_not_found(job_id)
            if found[0]["owner"] != owner:
                raise not_owner()
            if found[0]["status"] in ACTIVE:
                return found[0], []
            made = list(db.execute(sa.select(job_items.c.image_id).where(job_items.c.job_id == job_id,
                                                                         job_items.c.image_id.is_not(None))).scalars())
            removed = []
            for start in range(0, len(made), 1000):
                chunk = made[start : start + 1000]
                rows = db.execute(sa.select(images).where(images.c.image_id.in_(chunk))).mappings()
                removed += [record("images", one) for one in rows]
                db.execute(questions.delete().where(questions.c.image_id.in_(chunk)))
                db.execute(images.delete().where(images.c.image_id.in_(chunk)))
            db.execute(job_items.delete().where(job_items.c.job_id == job_id))
            db.execute(jobs.delete().where(jobs.c.job_id == job_id))
            return found[0], removed


def job_rows(db: sa.Connection, job_ids: list[str], lock: bool = False) -> list[dict]:
    """Jobs by id with their counts (done, failed), in one query for the jobs and one for the counts."""
    if not job_ids:
        return []
    chosen = sa.select(*[jobs.c[name] for name in JOB_FIELDS]).where(jobs.c.job_id.in_(job_ids))
    found = [dict(one) for one in db.execute(chosen.with_for_update() if lock else chosen).mappings()]
    counts = db.execute(sa.select(job_items.c.job_id, job_items.c.state, sa.func.count())
                        .where(job_items.c.job_id.in_(job_ids), job_items.c.state.in_(("done", "failed")))
                        .group_by(job_items.c.job_id, job_items.c.state)).all()
    for job in found:
        job["done"] = job["failed"] = 0
    by_id = {job["job_id"]: job for job in found}
    for job_id, state, count in counts:
        by_id[job_id][state] = count
    return found
