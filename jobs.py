"""The job runner: one thread a process that claims batch jobs' items, captions them, and keeps each result.

A loop, as a worker of a database-backed queue runs (the queue is the history's job items, see
history_jobs and history_sql_jobs):
1. claim up to MAX_BATCH items of one job, for JOB_CLAIM_SECONDS (renewed while they are worked on);
2. decode each staged file as an upload is decoded (content, size, pixels), and send the images to the
   captioner as bulk work, which runs only when no person's request has waited for a while (batcher.py);
3. while they are captioned, claim and decode the next items, so that the model never waits for the disk;
4. store each image file, then keep every result of the batch with its image record in one write; a result
   whose claim was lost (the job was cancelled, or the claim ran out and another worker took the item) is
   not kept, and its file is removed. So after kill -9 a job resumes where it stopped, none lost, none twice.
A worker that died leaves its claims to run out; a restart on the same machine gives back at once those of
its own earlier processes (the same host, a process that is gone).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass

from flask import Flask

import storage
from errors import AppError
from exports import full_caption
from history import iso_time
from history_jobs import ACTIVE

log = logging.getLogger(__name__)

STAGING_GRACE = 3600  # seconds: a job's folder younger than this may still be filling in another process


def worker_name() -> str:
    """This process's name in claims: host, process id, and a random part (a process id is used again)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def is_gone(worker: str, mine: str) -> bool:
    """Whether a worker named in claims is known to have died: on this host, an earlier process (a process
    id that is not running, or this one's id under another name: a restarted container's)."""
    host, _, rest = worker.rpartition(":")[0].partition(":")
    my_host, _, my_rest = mine.rpartition(":")[0].partition(":")
    if host != my_host or worker == mine:
        return False
    if rest == my_rest:
        return True
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


@dataclass
class Work:
    """One claimed item on its way: what it came as, its decoded file and its caption's future, or its error."""

    item: dict
    stored: object = None  # images.Encoded: the file to keep
    content_sha256: str | None = None
    model_input: object = None
    future: Future | None = None
    error: str | None = None


class JobRunner:
    """Runs batch jobs' items in a thread of its own, with the app's services, until closed."""

    def __init__(self, app: Flask, *, poll_seconds: float = 2.0, clock=time.time):
        self.app = app
        self.worker = worker_name()
        self.batch_size = app.config["MAX_BATCH"]
        self.claim_seconds = app.config["JOB_CLAIM_SECONDS"]
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._renewed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="job-runner", daemon=True)
        # A batch's files are read MAX_DECODES at a time (as uploads are), while the model runs the batch before.
        self._decoders = ThreadPoolExecutor(app.config["MAX_DECODES"], thread_name_prefix="job-decoder")

    def start(self) -> None:
        """Start the thread (JOB_WORKER on)."""
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (a job was just made), not at the next poll; nothing when this process runs no jobs."""
        self._wake.set()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batch at hand; what is claimed and not kept is claimed again after JOB_CLAIM_SECONDS."""
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._decoders.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        with self.app.app_context():
            self._give_back_the_dead()
            waiting: list[Work] = []
            while not self._closed.is_set():
                try:
                    claimed = self._claim()
                    if waiting:
                        self._keep(waiting)
                    waiting = claimed
                    if not waiting:
                        self._wake.wait(self.poll_seconds)
                        self._wake.clear()
                except Exception:  # a database or disk fault: logged; the claims run out and are taken again
                    log.exception("the job runner failed; trying again in %.0f s", self.poll_seconds)
                    waiting = []
                    self._closed.wait(self.poll_seconds)

    def _give_back_the_dead(self) -> None:
        try:
            history = self.app.extensions["history"]
            dead = {worker for worker in history.claimed_workers() if is_gone(worker, self.worker)}
            if dead:
                log.info("gave back %d job items claimed by a process that is gone",
                         history.release_claims(dead))
        except AppError as error:
            log.warning("could not look for job items a stopped process held (%s)", error.code)

    def _claim(self) -> list[Work]:
        """The next items, decoded and sent to the captioner; [] when there is nothing to do."""
        models = self.app.extensions["models"]
        if not getattr(models.captioner, "ready", True):
            return []
        now = self.clock()
        items = self.app.extensions["history"].claim_items(
            self.worker, iso_time(now), iso_time(now + self.claim_seconds), self.batch_size)
        works = list(self._decoders.map(self._decode, items))
        ready = [work for work in works if work.error is None]
        if ready:  # the items of one claim are one job's: one prompt
            for work, future in zip(ready, models.caption_in_bulk([work.model_input for work in ready],
                                                                  ready[0].item["prompt"])):
                work.future, work.model_input = future, None
        return works

    def _decode(self, item: dict) -> Work:
        """Read a staged file as an upload is read: the file to keep and the captioner's input, or the error."""
        import actions  # the upload's own decoding, in the app context this thread holds

        work = Work(item)
        path = os.path.join(self.app.config["JOBS_FOLDER"], item["job_id"], item["staged"])
        try:
            with self.app.app_context(), open(path, "rb") as file:
                work.content_sha256 = actions.sent_digest(file)
                work.stored, work.model_input = actions.decode(file)
        except FileNotFoundError:
            work.error = "its file is gone from the server (the job was deleted or cancelled)"
        except AppError as error:
            work.error = error.message
        return work

    def _keep(self, works: list[Work]) -> None:
        """Wait for the captions (renewing the claims meanwhile), then store the images and keep every result at
        once, under the stored files' shared lock (a start's sweep waits for it, never for the captioner)."""
        config, history = self.app.config, self.app.extensions["history"]
        results = [result for result in map(self._result, works) if result is not None]
        paths = []
        with storage.files_locked(config["UPLOAD_FOLDER"], exclusive=False):
            try:
                for result in results:
                    if result["image"]:
                        paths.append(storage.store(config["UPLOAD_FOLDER"], result["image"]["filename"],
                                                   result.pop("data"), "UPLOAD_FOLDER"))
                kept = set(history.finish_items(self.worker, results, iso_time(self.clock())))
            except BaseException:
                for path in paths:
                    storage.remove(path)
                raise
        lost = [result for result in results if (result["job_id"], result["position"]) not in kept]
        for result in lost:
            if result["image"]:
                storage.remove(os.path.join(config["UPLOAD_FOLDER"], result["image"]["filename"]))
        log.info("job items kept by %s: %d; not kept (the claim was lost): %d", self.worker, len(kept), len(lost))
        for job_id in {result["job_id"] for result in results}:
            self._tidy(job_id)

    def _result(self, work: Work) -> dict | None:
        """What finish_items keeps of an item: its caption and image record (with the file's bytes under "data"),
        or its error; None when the process is stopping before its caption came (it stays claimed)."""
        result = {"job_id": work.item["job_id"], "position": work.item["position"], "caption": None,
                  "error": work.error, "image": None}
        if work.error is not None:
            return result
        try:
            caption = self._caption_of(work)
        except CancelledError:
            return None
        except Exception as error:  # the model failed on this batch: the items fail, saying so
            log.exception("captioning a job's items failed")
            return {**result, "error": f"the caption model failed ({type(error).__name__}): start the job again"}
        image = self._image_record(work, caption)
        return {**result, "image": image, "data": work.stored.data,
                "caption": full_caption(caption, work.item["prefix"], work.item["suffix"])}

    def _caption_of(self, work: Work) -> str:
        """The item's caption, when the captioner gets to it; the claims are renewed while waiting."""
        while True:
            try:
                return work.future.result(timeout=min(self.poll_seconds, self.claim_seconds / 4))
            except TimeoutError:
                self._renew()

    def _renew(self) -> None:
        """Extend all this worker's claims, a third of JOB_CLAIM_SECONDS after the last time (the first: at once)."""
        now = self.clock()
        if now - self._renewed_at >= self.claim_seconds / 3:
            self.app.extensions["history"].renew_claims(self.worker, iso_time(now + self.claim_seconds))
            self._renewed_at = now

    def _image_record(self, work: Work, caption: str) -> dict:
        """The image record an item makes: the job owner's, named by the item's path."""
        image_id = str(uuid.uuid4())
        return {"image_id": image_id, "owner": work.item["owner"], "filename": image_id + work.stored.extension,
                "original_name": work.item["file_name"], "mime_type": work.stored.mime_type,
                "prompt": work.item["prompt"], "caption": caption, "created_at": iso_time(self.clock()),
                "questions": [], "content_sha256": work.content_sha256}

    def _tidy(self, job_id: str) -> None:
        """Remove a finished job's staged files."""
        if not still_active(self.app.extensions["history"], job_id):
            remove_staged(self.app.config["JOBS_FOLDER"], job_id)


def still_active(history, job_id: str) -> bool:
    """Whether a job is queued or running; not when it has ended or is gone (deleted, with DELETE /history too)."""
    try:
        return history.job(job_id)["status"] in ACTIVE
    except AppError:
        return False


def remove_staged(jobs_folder: str, job_id: str) -> None:
    """Remove a job's staged files (its folder in JOBS_FOLDER)."""
    shutil.rmtree(os.path.join(jobs_folder, job_id), ignore_errors=True)


def sweep_staged(jobs_folder: str, history, clock=time.time) -> None:
    """At start: remove the staged files of jobs that are finished or gone (a crash between finishing a job and
    removing its files, or a job deleted with the history). A folder changed within STAGING_GRACE seconds is
    left alone: another replica may be staging a job there that has no record yet."""
    if not os.path.isdir(jobs_folder):
        return
    for job_id in os.listdir(jobs_folder):
        try:
            young = clock() - os.stat(os.path.join(jobs_folder, job_id)).st_mtime < STAGING_GRACE
        except FileNotFoundError:
            continue
        if not young and not still_active(history, job_id):
            remove_staged(jobs_folder, job_id)
