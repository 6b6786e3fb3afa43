// The page's behaviour: every form also works as a plain post; this script makes it answer in place.
"use strict";

const MAX_BYTES = 16 * 1024 * 1024;
const IMAGE_TYPES = ["image/png", "image/jpeg"];
const IMAGE_NAME = /\.(png|jpe?g)$/i;
const GALLERY_PAGE = 12;

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

// Every answer is JSON; an error carries {"error", "code"} and its message is shown as it is.
async function call(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, ...options });
  } catch (failure) {
    throw new Error("the server could not be reached: check that it is running and try again");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (failure) {
    body = null;
  }
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const message = (body && body.error) || `the server answered ${response.status}`;
    throw new Error(retry && !/\d+ s/.test(message) ? `${message} (retry in ${retry} s)` : message);
  }
  return body;
}

// Tells a screen reader a result, once: "Caption: ...", "Answer: ...", "Image ready".
function announce(text) {
  const announcer = $("#announcer");
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);
}

function postJSON(url, fields) {
  return call(url, { method: "POST", body: JSON.stringify(fields),
                     headers: { Accept: "application/json", "Content-Type": "application/json" } });
}

// Runs one request for a form: busy text, disabled buttons, the error beside the form.
async function busy(form, label, work, { elapsed = false } = {}) {
  if (form.dataset.busy) return;
  const status = $(".busy", form);
  const error = $(".error", form);
  const started = Date.now();
  // The seconds are hidden from screen readers: the busy line is a live region, told once.
  const seconds = element("span", { ariaHidden: "true" });
  const show = () => { seconds.textContent = ` ${Math.floor((Date.now() - started) / 1000)} s`; };
  form.dataset.busy = "1";
  form.setAttribute("aria-busy", "true");
  form.querySelectorAll("button").forEach((button) => { button.disabled = true; });
  error.textContent = "";
  status.replaceChildren(label, ...(elapsed ? [seconds] : []));
  show();
  const timer = elapsed ? setInterval(show, 1000) : null;
  try {
    await work();
  } catch (failure) {
    error.textContent = failure.message;
  } finally {
    clearInterval(timer);
    status.textContent = "";
    delete form.dataset.busy;
    form.removeAttribute("aria-busy");
    form.querySelectorAll("button").forEach((button) => { button.disabled = false; });
  }
}

function fieldsOf(form) {
  const fields = {};
  for (const [name, value] of new FormData(form)) {
    if (name !== "csrf_token" && typeof value === "string" && value.trim() !== "") fields[name] = value.trim();
  }
  return fields;
}

// Upload: choose or drop a file, check it, preview it, caption it.

function checkFile(file) {
  if (!file) return "choose a PNG or JPEG image first";
  if (!IMAGE_TYPES.includes(file.type) && !IMAGE_NAME.test(file.name)) {
    return `"${file.name}" is not a PNG or JPEG image: choose a .png, .jpg or .jpeg file`;
  }
  if (file.size > MAX_BYTES) return `"${file.name}" is larger than 16 MB: choose a smaller image`;
  return "";
}

function setupUpload() {
  const form = $("#upload-form");
  if (!form) return;
  const input = $("#image-input");
  const preview = $("#preview");
  const error = $(".error", form);

  input.addEventListener("change", () => {
    const file = input.files[0];
    const problem = checkFile(file);
    error.textContent = file ? problem : "";
    preview.hidden = true;
    if (!file || problem) return;
    const reader = new FileReader();
    reader.addEventListener("load", () => { preview.src = reader.result; preview.hidden = false; });
    reader.readAsDataURL(file);
  });

  document.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("dropping"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dropping"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dropping");
    if (!event.dataTransfer.files.length) return;
    const files = new DataTransfer();
    files.items.add(event.dataTransfer.files[0]);
    input.files = files.files;
    input.dispatchEvent(new Event("change"));
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const problem = checkFile(input.files[0]);
    if (problem) {
      error.textContent = problem;
      return;
    }
    busy(form, "Uploading and captioning…", async () => {
      const body = await call("/upload", { method: "POST", body: new FormData(form) });
      showImage(body, `data:${body.mime_type};base64,${body.image}`);
      addToGallery("#image-gallery", imageItem(body));
      announce(`Caption: ${body.caption}`);
      $("#question-input").focus();
    });
  });
}

// The current image, its caption and its thread of questions.

function showImage(record, source) {
  const panel = $("#image-panel");
  $("#current-image").src = source || record.image_url;
  $("#current-image").alt = record.caption;
  $("#current-caption").textContent = record.caption;
  $("#question-image-id").value = record.image_id;
  $(".error", $("#question-form")).textContent = "";
  showThread(record.questions || []);
  panel.hidden = false;
}

function showThread(entries) {
  const thread = $("#thread");
  const said = (who, text) => [element("span", { className: "visually-hidden", textContent: who }), text];
  thread.replaceChildren(...entries.map((entry) => element("li", {}, [
    element("p", { className: "question" }, said("You asked: ", entry.question)),
    element("p", { className: "answer" }, said("Answer: ", entry.answer)),
  ])));
  if (thread.lastElementChild) thread.lastElementChild.scrollIntoView({ block: "nearest" });
}

function setupQuestions() {
  const form = $("#question-form");
  if (!form) return;
  const input = $("#question-input");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = fieldsOf(form);
    if (!fields.question) {
      $(".error", form).textContent = "type a question first";
      return;
    }
    busy(form, "Thinking…", async () => {
      const body = await postJSON("/question", fields);
      showThread(body.history);
      announce(`Answer: ${body.answer}`);
      input.value = "";
    }).then(() => input.focus());
  });
}

// Generation: the description and its options, a running clock, the result with its path.

function setupGenerate() {
  const form = $("#generate-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form, "Generating…", async () => {
      const body = await postJSON("/generate", fieldsOf(form));
      $("#generated-image").src = `data:${body.mime_type};base64,${body.image}`;
      $("#generated-image").alt = body.description;
      $("#generated-download").href = body.image_url;
      $("#generated-path").textContent = body.path;
      $("#generated").hidden = false;
      addToGallery("#generation-gallery", generationItem(body));
      announce("Image ready");
    }, { elapsed: true }).then(() => {
      // The button was disabled while it ran, so focus would fall to the page: give it the result.
      if (!$("#generated").hidden) $("#generated").focus();
    });
  });
}

// History: the galleries, reopening an image, loading more.

function imageItem(record) {
  const link = element("a", { href: `/page/images/${encodeURIComponent(record.image_id)}` }, [
    element("img", { src: record.image_url, alt: "", loading: "lazy" }),
    element("span", { textContent: record.caption }),
  ]);
  link.dataset.imageId = record.image_id;
  return element("li", {}, [link]);
}

function generationItem(record) {
  return element("li", {}, [element("a", { href: record.image_url }, [
    element("img", { src: record.image_url, alt: "", loading: "lazy" }),
    element("span", { textContent: record.description }),
  ])]);
}

function addToGallery(selector, item, atEnd = false) {
  const gallery = $(selector);
  const empty = $(".empty", gallery);
  if (empty) empty.remove();
  if (atEnd) gallery.append(item); else gallery.prepend(item);
}

function setupHistory() {
  const images = $("#image-gallery");
  if (!images) return;
  images.addEventListener("click", async (event) => {
    const link = event.target.closest("a[data-image-id]");
    if (!link) return;
    event.preventDefault();
    try {
      showImage(await call(`/images/${encodeURIComponent(link.dataset.imageId)}`));
      $("#image-panel").scrollIntoView();
      $("#question-input").focus();
    } catch (failure) {
      link.after(element("p", { className: "error", role: "alert", textContent: failure.message }));
    }
  });
  document.querySelectorAll("a.more").forEach((more) => {
    more.addEventListener("click", async (event) => {
      event.preventDefault();
      const kind = more.dataset.kind;
      const gallery = kind === "images" ? images : $("#generation-gallery");
      const offset = gallery.querySelectorAll("li:not(.empty)").length;
      try {
        const page = await call(`/history?limit=${GALLERY_PAGE}&offset=${offset}`);
        const items = kind === "images" ? page.images.map(imageItem) : page.generations.map(generationItem);
        items.forEach((item) => addToGallery(`#${gallery.id}`, item, true));
        const total = kind === "images" ? page.total_images : page.total_generations;
        // Focus goes to the first new item, not to the page when the link goes away.
        if (items.length) $("a", items[0]).focus();
        if (offset + items.length >= total) more.remove();
      } catch (failure) {
        more.after(element("p", { className: "error", role: "alert", textContent: failure.message }));
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupUpload();
  setupQuestions();
  setupGenerate();
  setupHistory();
});
