"""Caption a folder, in a real browser: the page's jobs panel (static/js/jobs.js) against /jobs, on 127.0.0.1.

The captioner is the tests' fake behind a gate that lets one image through at a time, so that the page sees
every step of a job's progress and the tests can tell what was announced at each (no sleeping, no timing).
The browser, the page sizes and the accessibility and tap-target checks are test_browser.py's.
"""

import csv
import io
import json
import threading
import zipfile

import pytest
from werkzeug.serving import make_server

from conftest import FakeCaptioner, image_bytes

# Imported for their fixtures and helpers; test_browser skips this module too where Chromium is missing.
from test_browser import (  # noqa: F401  (browser, page and audited are fixtures)
    assert_tap_targets, audited, axe_violations, browser, files, is_phone, page, shot, small_tap_targets)
from playwright.sync_api import expect

WAIT = 60  # seconds the gate waits for the test before failing the batch (a test that died must not hang)


class GatedCaptioner(FakeCaptioner):
    """The fake captioner, captioning one image for each permit the test gives (or all, once opened)."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Semaphore(0)

    def let_through(self, count: int = 1) -> None:
        for _ in range(count):
            self.gate.release()

    def open(self) -> None:
        self.let_through(10_000)

    def caption_batch(self, images, prompt=None, pause=None):
        for _ in images:
            if not self.gate.acquire(timeout=WAIT):
                raise TimeoutError("the test did not let this image through")
        return super().caption_batch(images, prompt, pause)


@pytest.fixture
def serve_jobs(make_app):
    """Serve an app with a job runner (JOB_WORKER, off in the other tests) that takes one image a batch (MAX_BATCH=1)
    to a gated captioner: (base URL, captioner)."""
    started = []

    def start(opened=False):
        captioner = GatedCaptioner()
        if opened:
            captioner.open()
        app = make_app(captioner, None, MAX_BATCH=1, JOB_WORKER=True)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append((server, app, captioner))
        return f"http://127.0.0.1:{server.server_port}", captioner

    yield start
    for server, app, captioner in started:
        captioner.open()
        server.shutdown()
        app.extensions["job_runner"].close()


# What the jobs' live region said, each text once as it was set (the announcer empties it before each).
RECORD_ANNOUNCEMENTS = """
window.told = [];
document.addEventListener("DOMContentLoaded", () => {
  const region = document.querySelector("#jobs-announcer");
  if (!region) return;
  new MutationObserver(() => { if (region.textContent) window.told.push(region.textContent); })
    .observe(region, {childList: true, characterData: true, subtree: true});
});
"""


def told(page) -> list[str]:
    return page.evaluate("window.told")


def folder_of_images(root, count, name="holiday"):
    """A folder of `count` PNGs (the last two in a sub-folder) and a text file; its path."""
    folder = root / name
    (folder / "day2").mkdir(parents=True)
    for index in range(count):
        where = folder / "day2" if index >= count - 2 else folder
        files(where / f"photo-{index}.png", image_bytes(color=(index * 20, 90, 160)))
    (folder / "notes.txt").write_text("not an image")
    return folder


def names_in(folder, root) -> set[str]:
    """The relative paths of a folder's images, as the page sends them (the folder's own name first)."""
    return {path.relative_to(root).as_posix() for path in folder.rglob("*.png")}


def start_job(page, selector, path) -> dict:
    """Choose a folder, files or a ZIP in the panel and press its button; the 202's body."""
    page.set_input_files(selector, path)
    with page.expect_response(lambda response: response.url.endswith("/jobs")
                              and response.request.method == "POST") as answer:
        page.click("#jobs-form button[type=submit]")
    assert answer.value.status == 202, answer.value.text()
    return answer.value.json()


def downloaded(page, row, format_) -> bytes:
    """The bytes of one of a job's exports, downloaded through its link in the list."""
    with page.expect_download() as download:
        row.locator(f"a.export[href$='format={format_}']").click()
    with open(download.value.path(), "rb") as file:
        return file.read()


def test_a_folder_is_captioned_its_progress_told_by_quarters_and_exported(page, serve_jobs, tmp_path):
    base, captioner = serve_jobs()
    page.add_init_script(RECORD_ANNOUNCEMENTS)
    page.goto(base + "/")
    expect(page.locator("#jobs")).to_be_visible()
    expect(page.locator("#job-list .empty")).to_have_text("No folders captioned yet.")
    expect(page.locator("#job-current")).to_be_hidden()
    folder = folder_of_images(tmp_path, 8)
    page.fill("#jobs-prefix", "sks,")
    page.fill("#jobs-suffix", "high quality")
    status_requests = []
    page.on("request", lambda request: "/jobs/" in request.url and request.url.count("/") == 4
            and request.method == "GET" and status_requests.append(request.url))

    started = start_job(page, "#jobs-folder", str(folder))
    assert started["total"] == 8
    assert [entry["file_name"] if isinstance(entry, dict) else entry for entry in started["skipped"]] == [
        "holiday/notes.txt"]
    progress, text = page.locator("#job-progress"), page.locator("#job-progress-text")
    expect(text).to_contain_text("0/8 captioned, 0 failed")
    expect(page.locator("#job-skipped")).to_contain_text("1 file skipped: holiday/notes.txt")
    expect(page.locator("#job-current-label")).to_have_text("Captioning 8 images")
    shot(page, f"jobs-01-running-{'phone' if is_phone(page) else 'desktop'}")
    assert_tap_targets(page)
    # The visible progress is read when a reader comes to it; only the separate region announces.
    assert page.evaluate("document.querySelector('#job-current')"
                         ".closest('[aria-live], [role=status], [role=alert], [role=log]') === null")
    for done in range(1, 9):
        captioner.let_through()
        expect(text).to_contain_text(f"{done}/8 captioned, 0 failed")
        expect(progress).to_have_js_property("value", done)
        expect(progress).to_have_js_property("max", 8)
    expect(text).to_have_text("Finished: 8/8 captioned, 0 failed")
    polled = len(status_requests)
    expect(page.locator("#jobs-announcer")).to_have_text("Captioning finished: 8 of 8 images captioned, 0 failed")
    assert told(page) == ["Captioning 8 images started", "Captioning: 25% done", "Captioning: 50% done",
                          "Captioning: 75% done", "Captioning finished: 8 of 8 images captioned, 0 failed"]

    row = page.locator("#job-list > li").first
    expect(row.locator(".job-status")).to_have_text("Finished: 8/8 captioned, 0 failed")
    expect(row.get_by_role("button", name="Cancel")).to_be_hidden()
    row.get_by_role("button", name="Show items").click()
    items = row.locator(".job-item-list li")
    expect(items).to_have_count(8)
    expect(row.get_by_role("button", name="Hide items")).to_have_attribute("aria-expanded", "true")
    first = items.filter(has=page.locator(".file", has_text="holiday/photo-0.png"))
    expect(first.locator(".caption")).to_have_text("sks, a fake caption high quality")
    assert set(items.locator(".file").all_inner_texts()) == names_in(folder, tmp_path)

    expected = names_in(folder, tmp_path)
    with zipfile.ZipFile(io.BytesIO(downloaded(page, row, "txt"))) as archive:
        assert set(archive.namelist()) == {name[:-len(".png")] + ".txt" for name in expected}
        assert archive.read("holiday/day2/photo-7.txt").decode() == "sks, a fake caption high quality"
    lines = downloaded(page, row, "jsonl").decode().splitlines()
    assert {json.loads(line)["file_name"] for line in lines} == expected
    rows = list(csv.DictReader(io.StringIO(downloaded(page, row, "csv").decode())))
    assert {entry["file_name"] for entry in rows} == expected
    assert {entry["caption"] for entry in rows} == {"sks, a fake caption high quality"}
    shot(page, f"jobs-02-finished-{'phone' if is_phone(page) else 'desktop'}")
    assert_tap_targets(page)
    # Nothing is polled once the job has ended: the items and three downloads came and went meanwhile.
    page.reload()
    expect(page.locator("#job-list > li").first.locator(".job-status")).to_contain_text("Finished")
    expect(page.locator("#job-current")).to_be_hidden()
    assert len(status_requests) == polled
    assert page.problems == []


def test_a_zip_is_captioned_and_its_failures_and_skips_are_shown(page, serve_jobs, tmp_path):
    base, _ = serve_jobs(opened=True)
    page.add_init_script(RECORD_ANNOUNCEMENTS)
    page.goto(base + "/")
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as made:
        made.writestr("set/a.png", image_bytes())
        made.writestr("set/b.jpg", image_bytes("JPEG"))
        made.writestr("set/broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        made.writestr("set/readme.txt", "a few words")
    started = start_job(page, "#jobs-archive", str(archive))
    assert started["total"] == 3
    text = page.locator("#job-progress-text")
    expect(text).to_have_text("Finished: 2/3 captioned, 1 failed")
    expect(page.locator("#job-skipped")).to_contain_text("set/readme.txt")
    expect(page.locator("#jobs-announcer")).to_have_text("Captioning finished: 2 of 3 images captioned, 1 failed")
    # Started and ended (or, when it had ended by the page's first look, ended): never once per item.
    assert told(page)[-1] == "Captioning finished: 2 of 3 images captioned, 1 failed"
    assert set(told(page)[:-1]) <= {"Captioning 3 images started", "Captioning: 25% done",
                                      "Captioning: 50% done"}

    row = page.locator("#job-list > li").first
    row.get_by_role("button", name="Show items").click()
    failed = row.locator(".job-item-list li.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".file")).to_have_text("set/broken.png")
    expect(failed.locator(".caption")).to_contain_text("failed: ")
    lines = downloaded(page, row, "jsonl").decode().splitlines()
    assert sorted(json.loads(line)["file_name"] for line in lines) == ["set/a.png", "set/b.jpg"]
    with zipfile.ZipFile(io.BytesIO(downloaded(page, row, "txt"))) as captions:
        assert sorted(captions.namelist()) == ["set/a.txt", "set/b.txt"]
    assert page.problems == []


def test_a_running_job_is_followed_after_a_reload_cancelled_and_then_deleted(page, serve_jobs, tmp_path, data_dir):
    base, captioner = serve_jobs()
    page.add_init_script(RECORD_ANNOUNCEMENTS)
    page.goto(base + "/")
    paths = [files(tmp_path / f"c{index}.png", image_bytes(color=(index * 50, 10, 10))) for index in range(4)]
    start_job(page, "#jobs-files", paths)
    captioner.let_through()
    text = page.locator("#job-progress-text")
    expect(text).to_contain_text("1/4 captioned")

    page.reload()  # the job still running is followed again
    expect(text).to_contain_text("1/4 captioned")
    row = page.locator("#job-list > li").first
    expect(row.locator(".job-status")).to_contain_text("Captioning: 1/4 captioned")
    expect(row.locator(".exports")).to_be_visible()  # one caption is there to download already
    with page.expect_response(lambda response: response.url.endswith("/cancel")) as cancelled:
        row.get_by_role("button", name="Cancel").click()
    assert cancelled.value.status == 200
    expect(text).to_have_text("Cancelled: 1/4 captioned, 0 failed")
    expect(row.locator(".job-status")).to_have_text("Cancelled: 1/4 captioned, 0 failed")
    expect(page.locator("#jobs-announcer")).to_have_text("Captioning cancelled: 1 of 4 images captioned")
    expect(row.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(row.get_by_role("button", name="Delete")).to_be_focused()  # not lost to the page
    assert_tap_targets(page)

    page.once("dialog", lambda dialog: dialog.dismiss())
    row.get_by_role("button", name="Delete").click()
    expect(page.locator("#job-list > li:not(.empty)")).to_have_count(1)  # "Cancel" in the dialog keeps it
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda response: response.request.method == "DELETE") as deleted:
        row.get_by_role("button", name="Delete").click()
    assert deleted.value.json()["images"] == 1
    expect(page.locator("#job-list .empty")).to_have_text("No folders captioned yet.")
    expect(page.locator("#jobs-announcer")).to_have_text("Job deleted")
    expect(page.locator("#jobs-list-heading")).to_be_focused()
    expect(page.locator("#job-current")).to_be_hidden()  # its progress goes with it
    assert list((data_dir / "uploads").glob("*.png")) == []
    assert page.problems == []


def test_what_cannot_be_sent_is_said_beside_the_form(page, serve_jobs, tmp_path):
    base, _ = serve_jobs(opened=True)
    page.goto(base + "/")
    sent = []
    page.on("request", lambda request: request.url.endswith("/jobs") and request.method == "POST"
            and sent.append(request))
    error = page.locator("#jobs-form .error")
    page.click("#jobs-form button[type=submit]")
    expect(error).to_have_text("Choose a folder, some images or a ZIP first.")
    assert sent == []
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("words")
    page.set_input_files("#jobs-folder", str(folder))
    expect(error).to_be_empty()  # the old message goes with its cause
    with page.expect_response(lambda response: response.url.endswith("/jobs")) as answer:
        page.click("#jobs-form button[type=submit]")
    assert answer.value.status == 400 and answer.value.json()["code"] == "no_images"
    expect(error).to_have_text("None of those files is an image. Choose PNG or JPEG images, a folder of them, "
                               "or a ZIP of them.")
    assert answer.value.json()["error"] not in error.inner_text()  # the API's words stay in the API
    expect(page.locator("#jobs-form button[type=submit]")).to_be_enabled()
    assert_tap_targets(page)


def test_the_jobs_panel_passes_axe_in_every_state(audited, serve_jobs, tmp_path):
    """axe-core, and on a phone the 44-px tap targets, with the panel empty, a job running with its items open,
    a job finished with its downloads, and an error."""
    page = audited
    base, captioner = serve_jobs()
    found, small = {}, {}

    def audit(state):
        found[state] = axe_violations(page)
        small[state] = small_tap_targets(page) if is_phone(page) else []

    page.goto(base + "/")
    expect(page.locator("#job-list .empty")).to_be_visible()
    audit("empty")
    start_job(page, "#jobs-folder", str(folder_of_images(tmp_path, 4)))
    captioner.let_through()
    expect(page.locator("#job-progress-text")).to_contain_text("1/4 captioned")
    row = page.locator("#job-list > li").first
    row.get_by_role("button", name="Show items").click()
    expect(row.locator(".job-item-list li")).to_have_count(4)
    audit("running, items open")
    captioner.open()
    expect(page.locator("#job-progress-text")).to_contain_text("Finished")
    audit("finished")
    page.click("#jobs-form button[type=submit]")
    expect(page.locator("#jobs-form .error")).not_to_be_empty()
    audit("error")
    shot(page, f"jobs-03-audited-{page.size_name}")
    assert {state: violations for state, violations in found.items() if violations} == {}
    assert {state: controls for state, controls in small.items() if controls} == {}


def test_without_javascript_the_panel_is_not_offered(browser, serve_jobs):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    base, _ = serve_jobs()
    page.goto(base + "/")
    expect(page.locator("#jobs")).to_be_hidden()  # it needs the script to follow a job
    context.close()
