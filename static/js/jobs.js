// Caption a folder: send many images (a folder, a choice of files, or a ZIP) as one job, follow its progress,
// and list the jobs with their items, Cancel or Delete, and the captions to download as a training set.
import { $, announce, busy, call, csrfToken, element, failureMessage, made, reveal } from "./common.js";

const POLL_MS = 1000;
const JOBS_PAGE = 20;
const ITEMS_PAGE = 100;
const ACTIVE = ["queued", "running"];
const EXPORTS = [["txt", "Captions as .txt files (ZIP)"], ["jsonl", "metadata.jsonl"], ["csv", "metadata.csv"]];
const STATUS = { queued: "Waiting to start", running: "Captioning", done: "Finished", cancelled: "Cancelled",
                 failed: "Failed" };
const REGION = "#jobs-announcer";

// The words for the jobs' own error codes; the others are common.js's.
const MESSAGES = {
  missing_images: "Choose a folder, some images or a ZIP first.",
  no_images: "None of those files is an image. Choose PNG or JPEG images, a folder of them, or a ZIP of them.",
  invalid_archive: "That file cannot be read as a ZIP. Choose a .zip file made by a usual tool.",
  too_many_files: "That is more files than one job may hold. Split the folder into several smaller ones.",
  job_too_large: "Those files are too large together for one job. Split the folder into several smaller ones.",
  too_many_jobs: "You already have as many jobs running as you may. Wait for one to finish, or cancel one.",
  prefix_too_long: "The text before each caption is too long. Shorten it to a few words.",
  suffix_too_long: "The text after each caption is too long. Shorten it to a few words.",
  job_not_found: "That job is no longer here.",
  not_owner: "Only the browser that started it can cancel or delete it.",
};

const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;

// A job as a person tells it apart from the others: when it was started, and how many images it holds.
const jobName = (job) => `the job of ${job.created_at.slice(0, 16).replace("T", " ")} UTC, ${plural(job.total, "image")}`;

function timeLeft(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const left = Math.max(1, Math.ceil(seconds));
  return left < 120 ? `about ${left} s left` : `about ${Math.round(left / 60)} min left`;
}

// "5/8 captioned, 1 failed, about 4 s left"; a finished job says how it ended.
function progressText(job) {
  const counts = `${job.done}/${job.total} captioned, ${job.failed} failed`;
  if (job.status === "running") return [counts, timeLeft(job.eta_s)].filter(Boolean).join(", ");
  return `${STATUS[job.status]}: ${counts}`;
}

function ending(job) {
  if (job.status === "done") {
    return `Captioning finished: ${job.done} of ${plural(job.total, "image")} captioned, ${job.failed} failed`;
  }
  if (job.status === "cancelled") return `Captioning cancelled: ${job.done} of ${plural(job.total, "image")} captioned`;
  return `Captioning failed: ${job.done} of ${plural(job.total, "image")} captioned`;
}

const skippedName = (entry) => `${entry.file_name} (${entry.reason})`;

function skippedText(job) {
  const skipped = job.skipped || [];
  const count = job.skipped_count ?? skipped.length;  // the server lists the first 100 and counts them all
  if (!count) return "";
  const shown = skipped.slice(0, 5).map(skippedName).join("; ");
  return `${plural(count, "file")} skipped: ${shown}${count > 5 ? "; …" : ""}`;
}

// Sends the form with the upload's progress, which fetch cannot report: {status, body, retry}.
function send(url, fields, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", url);
    request.setRequestHeader("Accept", "application/json");
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch (failure) {
        body = null;
      }
      resolve({ status: request.status, body, retry: request.getResponseHeader("Retry-After") });
    });
    request.addEventListener("error", () => {
      reject(new Error("The server could not be reached. Check your connection and try again."));
    });
    request.send(fields);
  });
}

// The chosen files as the server takes them: a folder's files named by their path inside it, or one ZIP.
function chosenFields(form) {
  const fields = new FormData();
  fields.append("csrf_token", csrfToken(form));
  const archive = $("#jobs-archive").files[0];
  const files = [...$("#jobs-folder").files, ...$("#jobs-files").files];
  if (archive) fields.append("archive", archive, archive.name);
  files.forEach((file) => fields.append("images", file, file.webkitRelativePath || file.name));
  for (const name of ["prompt", "prefix", "suffix"]) {
    const value = form.elements[name].value.trim();
    if (value) fields.append(name, value);
  }
  return { fields, count: files.length, archive };
}

export function setupJobs() {
  const panel = $("#jobs");
  if (!panel) return;
  reveal("#jobs");
  const form = $("#jobs-form");
  const pickers = ["#jobs-folder", "#jobs-files", "#jobs-archive"].map((selector) => $(selector));
  const list = $("#job-list");
  const listError = $(".jobs-error", panel);
  const more = $("#more-jobs");
  const rows = new Map();  // job_id -> {item, update}
  // The job followed: {id, quarter (of its progress last told), told (whether its end is to be told: it was
  // started here, or seen running), timer}.
  let current = null;
  let shown = null;  // the id of the job whose progress is shown (followed, or ended)

  // One choice at a time: the folder, the files or the ZIP chosen last is what is sent.
  for (const picker of pickers) {
    picker.addEventListener("change", () => {
      $(".error", form).textContent = "";
      if (!picker.files.length) return;
      pickers.filter((other) => other !== picker).forEach((other) => { other.value = ""; });
    });
  }
  form.addEventListener("input", (event) => {
    if (!pickers.includes(event.target)) $(".error", form).textContent = "";
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const { fields, count, archive } = chosenFields(form);
    if (!count && !archive) {
      $(".error", form).textContent = "Choose a folder, some images or a ZIP first.";
      return;
    }
    // The share sent is hidden from screen readers, as the busy line's seconds are: the line is told once.
    const sent = element("span", { ariaHidden: "true" });
    const label = archive ? `Sending ${archive.name}…` : `Sending ${plural(count, "file")}…`;
    busy(form, label, async () => {
      $(".busy", form).append(sent);
      const answer = await send("/jobs", fields, (share) => { sent.textContent = ` ${Math.floor(share * 100)}%`; });
      if (answer.status !== 202) throw new Error(failureMessage(answer.status, answer.body, answer.retry, MESSAGES));
      pickers.forEach((picker) => { picker.value = ""; });  // the caption settings stay, for the next folder
      const job = await call(answer.body.status_url || `/jobs/${encodeURIComponent(answer.body.job_id)}`, {}, MESSAGES);
      showRow(job, true);
      follow(job, true);
    });
  });

  // The job followed: its progress bar and text, polled about every second while it is queued or running.
  function follow(job, started) {
    if (current) clearTimeout(current.timer);
    current = { id: job.job_id, quarter: quarterOf(job), told: started, timer: null };
    $("#job-current-label").textContent = `Captioning ${plural(job.total, "image")}`;
    $("#job-current").hidden = false;
    showProgress(job);
    if (!ACTIVE.includes(job.status)) {  // all done before the first look (or every file failed at once)
      if (started) announce(ending(job), REGION);
      current = null;
      return;
    }
    if (started) announce(`Captioning ${plural(job.total, "image")} started`, REGION);
    current.timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    const followed = current;
    let job;
    try {
      job = await call(`/jobs/${encodeURIComponent(followed.id)}`, {}, MESSAGES);
    } catch (failure) {
      if (current !== followed) return;
      $("#job-progress-text").textContent = failure.message;
      if (failure.status === 404) {  // deleted meanwhile (elsewhere, or with the history)
        followNext();
        return;
      }
      followed.timer = setTimeout(poll, POLL_MS * 5);  // the server may come back; ask less often meanwhile
      return;
    }
    if (current !== followed) return;  // another job is followed now
    showProgress(job);
    const row = rows.get(job.job_id);
    if (row) row.update(job);
    if (!ACTIVE.includes(job.status)) {
      if (followed.told) announce(ending(job), REGION);  // not the end, long past, of a job seen only as listed
      followNext();
      return;
    }
    followed.told = true;
    const quarter = quarterOf(job);
    if (quarter > followed.quarter && quarter < 4) announce(`Captioning: ${quarter * 25}% done`, REGION);
    followed.quarter = Math.max(quarter, followed.quarter);
    followed.timer = setTimeout(poll, POLL_MS);
  }

  // After one job ends, the newest other job still queued or running is followed; else nothing is polled.
  function followNext() {
    current = null;
    const next = [...rows.values()].map((row) => row.job).find((job) => ACTIVE.includes(job.status));
    if (next) follow(next, false);
  }

  function quarterOf(job) {
    return job.total ? Math.floor((4 * (job.done + job.failed)) / job.total) : 4;
  }

  function showProgress(job) {
    shown = job.job_id;
    const bar = $("#job-progress");
    bar.max = Math.max(job.total, 1);
    bar.value = job.done + job.failed;
    $("#job-progress-text").textContent = progressText(job);
    $("#job-skipped").textContent = skippedText(job);
  }

  // The list of jobs: a row each, built once and updated in place, so that a focused button keeps its focus.
  function showRow(job, atTop) {
    const known = rows.get(job.job_id);
    if (known) {
      known.update(job);
      return;
    }
    const row = jobRow(job);
    rows.set(job.job_id, row);
    const empty = $(".empty", list);
    if (empty) empty.remove();
    if (atTop) list.prepend(row.item); else list.append(row.item);
  }

  function jobRow(job) {
    const named = (text) => [text, element("span", { className: "visually-hidden", textContent: ` ${jobName(job)}` })];
    const title = element("h4", {}, [plural(job.total, "image"), " · ", made(job.created_at)]);
    const status = element("p", { className: "job-status" });
    const settings = element("p", { className: "hint" });
    const skipped = element("p", { className: "hint" });
    const itemsId = `job-items-${job.job_id}`;
    const show = element("button", { type: "button", className: "quiet" }, named("Show items"));
    show.setAttribute("aria-expanded", "false");
    show.setAttribute("aria-controls", itemsId);
    const cancel = element("button", { type: "button", className: "quiet danger" }, named("Cancel"));
    const remove = element("button", { type: "button", className: "quiet danger" }, named("Delete"));
    const links = EXPORTS.map(([format, text]) => element("a", {
      className: "export", href: `/jobs/${encodeURIComponent(job.job_id)}/export?format=${format}`, download: "",
    }, named(text)));
    const exportsLine = element("p", { className: "exports" }, [
      element("span", { textContent: "Download: " }),
      ...links.flatMap((link, index) => (index ? [" ", link] : [link])),
    ]);
    const items = element("div", { id: itemsId, className: "job-items", hidden: true });
    const error = element("p", { className: "error", role: "alert" });
    const item = element("li", {}, [title, status, settings, skipped,
                                    element("div", { className: "actions" }, [show, cancel, remove]),
                                    exportsLine, error, items]);
    const row = { item, job };

    row.update = (view) => {
      row.job = view;
      const active = ACTIVE.includes(view.status);
      status.textContent = `${STATUS[view.status]}: ${view.done}/${view.total} captioned, ${view.failed} failed`;
      settings.textContent = [["start of each caption", view.prompt], ["before each caption", view.prefix],
                              ["after each caption", view.suffix]]
        .filter(([, value]) => value).map(([what, value]) => `${what}: “${value}”`).join(" · ");
      skipped.textContent = skippedText(view);
      const focused = document.activeElement;
      cancel.hidden = !active;
      remove.hidden = active;
      exportsLine.hidden = !(view.done > 0);
      // A button that went away (Cancel, once the job ends) hands the focus on, not to the page.
      if (focused && (focused === cancel || links.includes(focused)) && focused.closest("[hidden]")) show.focus();
    };
    row.update(job);

    show.addEventListener("click", async () => {
      if (show.getAttribute("aria-expanded") === "true") {
        items.hidden = true;
        show.setAttribute("aria-expanded", "false");
        show.firstChild.textContent = "Show items";
        return;
      }
      error.textContent = "";
      try {
        await showItems(row.job, items, 0, error);
        items.hidden = false;
        show.setAttribute("aria-expanded", "true");
        show.firstChild.textContent = "Hide items";
      } catch (failure) {
        error.textContent = failure.message;
      }
    });
    cancel.addEventListener("click", async () => {
      error.textContent = "";
      try {
        // POST .../cancel, not DELETE: a job that ended just before the click is left as it is, never deleted.
        const answer = await call(`/jobs/${encodeURIComponent(row.job.job_id)}/cancel`, { method: "POST" }, MESSAGES);
        const view = answer.job;
        row.update(view);
        if (current && current.id === view.job_id) {
          clearTimeout(current.timer);
          showProgress(view);
          announce(ending(view), REGION);
          followNext();
        }
        remove.focus();
      } catch (failure) {
        error.textContent = failure.message;
      }
    });
    remove.addEventListener("click", async () => {
      const view = row.job;
      const images = view.done ? ` and its ${plural(view.done, "captioned image")}` : "";
      if (!confirm(`Delete this job${images}? This cannot be undone.`)) return;
      error.textContent = "";
      try {
        await call(`/jobs/${encodeURIComponent(view.job_id)}`, { method: "DELETE" }, MESSAGES);
        forget();
      } catch (failure) {
        error.textContent = failure.message;
      }
    });
    // The row goes, and the progress shown for its job; the focus goes to the list's heading.
    function forget() {
      const id = row.job.job_id;
      item.remove();
      rows.delete(id);
      if (!rows.size) emptyList();
      if (shown === id) $("#job-current").hidden = true;
      if (current && current.id === id) {
        clearTimeout(current.timer);
        followNext();
      }
      announce("Job deleted", REGION);
      $("#jobs-list-heading").focus();
    }
    return row;
  }

  // One page of a job's items, each its file name and its caption (or why it failed); more on request.
  async function showItems(job, box, offset, error) {
    const page = await call(`/jobs/${encodeURIComponent(job.job_id)}/items?limit=${ITEMS_PAGE}&offset=${offset}`,
                            {}, MESSAGES);
    const entries = page.items.map((entry) => {
      let said = "waiting";
      if (entry.status === "done") said = entry.caption;
      else if (entry.status === "failed") said = `failed: ${entry.error}`;
      else if (entry.status === "cancelled") said = "cancelled";
      else if (entry.status === "running") said = "captioning";
      return element("li", { className: entry.status }, [
        element("span", { className: "file", textContent: entry.file_name }), " ",
        element("span", { className: "caption", textContent: said }),
      ]);
    });
    let listed = $("ol", box);
    if (!offset || !listed) {
      listed = element("ol", { className: "job-item-list" });
      box.replaceChildren(listed);
    }
    listed.append(...entries);
    const shown = offset + page.items.length;
    if (shown < page.total) {
      const next = element("button", { type: "button", className: "quiet",
                                       textContent: `Show ${Math.min(ITEMS_PAGE, page.total - shown)} more items` });
      next.addEventListener("click", async () => {
        error.textContent = "";
        try {
          await showItems(job, box, shown, error);
          next.remove();
          // The focus goes to the first new item, not to the page when the button goes away.
          const first = listed.children[shown];
          if (first) {
            first.tabIndex = -1;
            first.focus();
          }
        } catch (failure) {
          error.textContent = failure.message;
        }
      });
      box.append(next);
    }
  }

  function emptyList() {
    list.replaceChildren(element("li", { className: "empty", textContent: "No folders captioned yet." }));
  }

  // The caller's jobs, newest first; a job still running when the page opens is followed again.
  async function loadJobs(offset) {
    try {
      const page = await call(`/jobs?limit=${JOBS_PAGE}&offset=${offset}`, {}, MESSAGES);
      if (!offset && !page.jobs.length) emptyList();
      page.jobs.forEach((job) => showRow(job, false));
      more.hidden = offset + page.jobs.length >= page.total;
      listError.textContent = "";
      const running = page.jobs.find((job) => ACTIVE.includes(job.status));
      if (!current && running) follow(running, false);
      return page.jobs;
    } catch (failure) {
      listError.textContent = failure.message;
      return [];
    }
  }

  more.addEventListener("click", async () => {
    const before = rows.size;
    const loaded = await loadJobs(before);
    if (loaded.length) $("button", rows.get(loaded[0].job_id).item).focus();
  });
  loadJobs(0);
}
