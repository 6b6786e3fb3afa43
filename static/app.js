// The page's behaviour: every form also works as a plain post; this script makes it answer in place.
"use strict";

const MAX_BYTES = 16 * 1024 * 1024;
const HEAD_BYTES = 512;  // enough for every signature below, and for an SVG's XML declaration and comments
const GALLERY_PAGE = 12;
const MAX_QUESTION = 500;

// What the page says for each error the API names: words for a person, not for a script.
const MESSAGES = {
  missing_image: "Choose an image first.",
  too_many_files: "Choose one image at a time.",
  empty_file: "That file is empty. Choose the image again.",
  not_an_image: "That file is not a PNG or JPEG image we can read. Choose another one.",
  unsupported_image_format: "That file is not a PNG or JPEG image. Convert it to PNG or JPEG and upload that.",
  damaged_image: "That image is damaged or only partly downloaded. Save it again, or choose another copy.",
  file_too_large: "That image is larger than 16 MB. Choose a smaller one.",
  image_too_large: "That image has too many pixels. Choose a smaller one.",
  prompt_too_long: "The start of the caption is too long. Shorten it to a few words.",
  missing_question: "Type a question first.",
  question_too_long: "Questions can be at most 500 characters long. Shorten yours.",
  missing_description: "Describe the image you want first.",
  description_too_long: "The description can be at most 1,000 characters long. Shorten it.",
  image_not_found: "That image is no longer here. Upload it again.",
  image_file_missing: "That image's file is gone. Upload it again.",
  generation_not_found: "That image is no longer here.",
  model_unavailable: "This part of the assistant is not available on this server right now.",
  model_busy: "The assistant is busy with other requests. Try again in a moment.",
  model_timeout: "The assistant took too long. Try again in a moment.",
  no_api_key: "Drawing images is not set up on this server yet.",
  all_keys_disabled: "Drawing images is not set up on this server right now.",
  all_keys_busy: "Drawing is busy right now. Try again in a little while.",
  model_not_served: "Drawing is not available right now: the server's drawing model is not offered by any provider.",
  generation_rejected: "The drawing service did not accept these settings. Change them and try again.",
  invalid_num_inference_steps:
    "The drawing model does not take that number of steps. Leave Steps blank for its default.",
  invalid_guidance_scale: "The drawing model does not take that guidance scale. Leave it blank.",
  invalid_negative_prompt: "The drawing model does not use a negative prompt. Leave it blank.",
  insufficient_storage: "The server's disk is full, so nothing was saved. Try again later.",
  storage_read_only: "The server cannot save anything right now. Try again later.",
  cross_origin: "This request did not come from this page. Reload the page and try again.",
  not_owner: "Only the browser that made it can delete it.",
};

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

// Every answer is JSON; an error carries {"error", "code"}, and the page says it in a person's words.
async function call(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, ...options });
  } catch (failure) {
    throw new Error("The server could not be reached. Check your connection and try again.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (failure) {
    body = null;
  }
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const message = MESSAGES[body && body.code] || (response.status >= 500
      ? "Something went wrong on the server. Try again in a moment."
      : "That did not work. Check what you entered and try again.");
    throw new Error(retry ? `${message} (You can try again in ${retry} s.)` : message);
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
  form.querySelectorAll("button[type=submit]").forEach((button) => { button.disabled = true; });
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
    form.querySelectorAll("button[type=submit]").forEach((button) => { button.disabled = false; });
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

// What the formats that cannot be captioned are called, as a person would say it.
const FORMATS = {
  GIF: "a GIF image", WebP: "a WebP image", TIFF: "a TIFF image", BMP: "a BMP image", PDF: "a PDF document",
  AVIF: "an AVIF image", "HEIC/HEIF": "a HEIC/HEIF image", "JPEG XL": "a JPEG XL image",
  "JPEG 2000": "a JPEG 2000 image", ICO: "an ICO icon", PSD: "a Photoshop (PSD) file", SVG: "an SVG drawing",
};
const AVIF_BRANDS = ["avif", "avis"];
const HEIF_BRANDS = ["heic", "heix", "hevc", "hevx", "heim", "heis", "hevm", "hevs", "mif1", "msf1"];
const SVG_START = /^\uFEFF?\s*(<\?xml[^>]*>\s*)?(<!--[\s\S]*?-->\s*|<!DOCTYPE[^>]*>\s*)*<svg[\s>]/i;

// A file's format by its first bytes, as the server judges it (by content, never by name): "PNG", "JPEG",
// another name from FORMATS, or "" for nothing recognisable.
const BMP_HEADER_SIZES = [12, 16, 40, 52, 56, 64, 108, 124];

function formatOf(bytes) {
  const has = (signature, offset = 0) => [...signature].every((value, index) =>
    bytes[offset + index] === (typeof value === "string" ? value.charCodeAt(0) : value));
  if (has([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "PNG";
  if (has([0xff, 0xd8, 0xff])) return "JPEG";
  if (has("GIF87a") || has("GIF89a")) return "GIF";
  if (has("RIFF") && has("WEBP", 8)) return "WebP";
  if (has("II*\0") || has("MM\0*")) return "TIFF";
  // "BM", zero reserved fields, and a header size one of BMP's versions uses: not any text that starts "BM".
  if (has("BM") && has([0, 0, 0, 0], 6) && BMP_HEADER_SIZES.includes(bytes[14]) && has([0, 0, 0], 15)) return "BMP";
  if (has("%PDF-")) return "PDF";
  if (has("ftyp", 4)) return isoFormatOf(bytes);
  if (has([0xff, 0x0a]) || has([0, 0, 0, 0x0c, 0x4a, 0x58, 0x4c, 0x20, 0x0d, 0x0a, 0x87, 0x0a])) return "JPEG XL";
  if (has([0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20, 0x0d, 0x0a, 0x87, 0x0a]) || has([0xff, 0x4f, 0xff, 0x51])) {
    return "JPEG 2000";
  }
  if (has([0, 0, 1, 0])) return "ICO";
  if (has("8BPS")) return "PSD";
  if (SVG_START.test(new TextDecoder().decode(bytes))) return "SVG";
  return "";
}

// An ISO media file (HEIC, AVIF, MP4...) says what it is by the brands of its ftyp box: the major brand at
// 8..12, then, after the minor version, the compatible ones up to the box's end. AVIF wins when listed.
function isoFormatOf(bytes) {
  const end = Math.min(new DataView(bytes.buffer, bytes.byteOffset).getUint32(0), bytes.length);
  const brand = (offset) => String.fromCharCode(...bytes.subarray(offset, offset + 4));
  const brands = [brand(8)];
  for (let offset = 16; offset + 4 <= end; offset += 4) brands.push(brand(offset));
  if (brands.some((name) => AVIF_BRANDS.includes(name))) return "AVIF";
  if (brands.some((name) => HEIF_BRANDS.includes(name))) return "HEIC/HEIF";
  return "";
}

// What is wrong with one file before it is sent, in a person's words; "" when it can be sent.
async function checkFile(file) {
  let bytes;
  try {
    bytes = new Uint8Array(await file.slice(0, HEAD_BYTES).arrayBuffer());
  } catch (failure) {
    return `"${file.name}" could not be read. Choose it again.`;
  }
  if (!bytes.length) return `"${file.name}" is empty. Choose the image again.`;
  const format = formatOf(bytes);
  if (FORMATS[format]) {
    return `"${file.name}" is ${FORMATS[format]}, which cannot be captioned here. `
      + "Convert it to PNG or JPEG and choose that.";
  }
  if (!format) return `"${file.name}" is not a PNG or JPEG image. Choose a PNG or JPEG image.`;
  if (file.size > MAX_BYTES) return `"${file.name}" is larger than 16 MB. Choose a smaller image.`;
  return "";
}

// The first problem among the chosen files; "" when every one can be sent.
async function checkFiles(files) {
  if (!files.length) return "Choose a PNG or JPEG image first.";
  for (const file of files) {
    const problem = await checkFile(file);
    if (problem) return problem;
  }
  return "";
}

function setupUpload() {
  const form = $("#upload-form");
  if (!form) return;
  const input = $("#image-input");
  const preview = $("#preview");
  const error = $(".error", form);

  input.addEventListener("change", async () => {
    const chosen = [...input.files];
    error.textContent = "";
    preview.hidden = true;
    if (!chosen.length) return;
    const problem = await checkFiles(chosen);
    if (input.files[0] !== chosen[0]) return;  // chosen again meanwhile: that choice speaks
    error.textContent = problem;
    if (problem) return;
    const file = chosen[0];
    const reader = new FileReader();
    reader.addEventListener("load", () => { preview.src = reader.result; });
    reader.readAsDataURL(file);
  });
  // A file named .png that is no image: said at once, instead of a broken preview.
  preview.addEventListener("load", () => { preview.hidden = false; });
  preview.addEventListener("error", () => {
    if (!input.files[0]) return;
    preview.hidden = true;
    error.textContent = `"${input.files[0].name}" is not an image we can read. Choose a PNG or JPEG image.`;
  });
  form.addEventListener("input", (event) => { if (event.target !== input) error.textContent = ""; });

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

  // A pasted file is taken as if it had been chosen; its content, not its type, decides then.
  document.addEventListener("paste", (event) => {
    const pasted = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (!pasted.length || input.disabled) return;
    event.preventDefault();
    const files = new DataTransfer();
    pasted.forEach((file) => files.items.add(file));
    input.files = files.files;
    input.dispatchEvent(new Event("change"));
    announce(pasted.length === 1 ? "Image pasted" : `${pasted.length} images pasted`);
  });

  // Several files are sent one after the other, each captioned; the gallery fills as each finishes.
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (form.dataset.busy) return;
    const chosen = [...input.files];
    const problem = await checkFiles(chosen);
    if (problem) {
      error.textContent = problem;
      return;
    }
    const prompt = $("#prompt-input").value;
    busy(form, chosen.length > 1 ? `Uploading and captioning ${chosen.length} images…` : "Uploading and captioning…", async () => {
      for (const file of chosen) {
        const fields = new FormData();
        fields.append("csrf_token", $("input[name=csrf_token]", form).value);
        fields.append("image", file, file.name || "pasted.png");
        if (prompt.trim()) fields.append("prompt", prompt);
        const body = await call("/upload", { method: "POST", body: fields });
        showImage(body, `data:${body.mime_type};base64,${body.image}`);
        addToGallery("#image-gallery", imageItem(body));
        announce(`Caption: ${body.caption}`);
      }
      form.reset();  // so that pressing Upload again does not store the same images twice
      preview.hidden = true;
      preview.removeAttribute("src");
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
  // The open image is in the address, so that a reload (or a bookmark) reopens it.
  history.replaceState(null, "", `#image=${encodeURIComponent(record.image_id)}`);
}

function showThread(entries) {
  const thread = $("#thread");
  const said = (who, text) => [element("span", { className: "visually-hidden", textContent: who }), text];
  thread.replaceChildren(...entries.map((entry) => element("li", {}, [
    element("p", { className: "question" }, said("You asked: ", entry.question)),
    element("p", { className: "answer" }, said("Answer: ", entry.answer)),
    copyButton("Copy answer", entry.answer),
  ])));
  if (thread.lastElementChild) thread.lastElementChild.scrollIntoView({ block: "nearest" });
}

function setupQuestions() {
  const form = $("#question-form");
  if (!form) return;
  const input = $("#question-input");
  const count = $("#question-count");
  const error = $(".error", form);
  const counted = () => {
    const length = input.value.length;
    count.textContent = `${length} of ${MAX_QUESTION} characters`;
    count.classList.toggle("over", length > MAX_QUESTION);
  };
  input.addEventListener("input", () => {
    counted();
    error.textContent = input.value.length > MAX_QUESTION
      ? `Questions can be at most ${MAX_QUESTION} characters long; yours has ${input.value.length}. Shorten it.` : "";
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = fieldsOf(form);
    if (!fields.question) {
      error.textContent = "Type a question first.";
      return;
    }
    if (fields.question.length > MAX_QUESTION) {
      error.textContent = `Questions can be at most ${MAX_QUESTION} characters long; yours has ${fields.question.length}. Shorten it.`;
      return;
    }
    busy(form, "Thinking…", async () => {
      const body = await postJSON("/question", fields);
      showThread(body.history);
      announce(`Answer: ${body.answer}`);
      input.value = "";
      counted();
    }).then(() => input.focus());
  });
}

// Generation: the description and its options, a running clock, the result with its path.

const SETTINGS = ["width", "height", "num_inference_steps", "negative_prompt", "guidance_scale", "seed"];

function setupGenerate() {
  const form = $("#generate-form");
  if (!form) return;
  form.addEventListener("input", () => { $(".error", form).textContent = ""; });
  // The last settings used are remembered in this browser, and stay in the form after each image.
  const remembered = JSON.parse(localStorage.getItem("generation-settings") || "{}");
  for (const name of SETTINGS) {
    if (remembered[name] !== undefined) form.elements[name].value = remembered[name];
  }
  // Ctrl+Enter (or Cmd+Enter) in the description sends it.
  $("#description-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  const cancel = $("#cancel-generate");
  let running = null;
  cancel.addEventListener("click", () => { if (running) running.abort(); });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = fieldsOf(form);
    localStorage.setItem("generation-settings",
                         JSON.stringify(Object.fromEntries(SETTINGS.map((name) => [name, form.elements[name].value]))));
    running = new AbortController();
    cancel.hidden = false;
    busy(form, "Generating…", async () => {
      let body;
      try {
        body = await call("/generate", { method: "POST", body: JSON.stringify(fields), signal: running.signal,
                                         headers: { Accept: "application/json", "Content-Type": "application/json" } });
      } catch (failure) {
        if (running.signal.aborted) throw new Error("Cancelled. (If the server had already started, the image may still appear in your history.)");
        throw failure;
      }
      $("#generated-image").src = `data:${body.mime_type};base64,${body.image}`;
      $("#generated-image").alt = body.description;
      $("#generated-download").href = body.image_url;
      $("#generated").hidden = false;
      addToGallery("#generation-gallery", generationItem(body));
      announce("Image ready");
    }, { elapsed: true }).then(() => {
      cancel.hidden = true;
      running = null;
      // The button was disabled while it ran, so focus would fall to the page: give it the result.
      if (!$("#generated").hidden) $("#generated").focus();
    });
  });
}

// History: the galleries, reopening an image, loading more.

// When an item was made, as the server renders it: "2026-11-25 10:00 UTC".
function made(record) {
  return element("time", { dateTime: record.created_at,
                           textContent: `${record.created_at.slice(0, 16).replace("T", " ")} UTC` });
}

function imageItem(record) {
  const link = element("a", { href: `/page/images/${encodeURIComponent(record.image_id)}` }, [
    element("img", { src: record.image_url, alt: "", loading: "lazy" }),
    element("span", { textContent: record.caption }),
  ]);
  link.dataset.imageId = record.image_id;
  return element("li", {}, [link, download(record.image_url, record.caption),
                            element("small", {}, [`${record.original_name || "pasted image"} · `, made(record)])]);
}

function generationItem(record) {
  const remove = element("button", { type: "button", className: "quiet danger delete-generation" },
                         ["Delete", element("span", { className: "visually-hidden", textContent: ` ${record.description}` })]);
  remove.dataset.generationId = record.generation_id;
  const link = element("a", { href: record.image_url }, [
    element("img", { src: record.image_url, alt: "", loading: "lazy" }),
    element("span", { textContent: record.description }),
  ]);
  link.dataset.lightbox = record.description;
  return element("li", {}, [link, download(record.image_url, record.description), element("small", {}, [made(record)]),
                            remove]);
}

function download(url, name) {
  return element("a", { className: "download", href: url, download: "" },
                 ["Download", element("span", { className: "visually-hidden", textContent: ` ${name}` })]);
}

// Copying a caption or an answer, viewing an image large.

function copyButton(label, text) {
  const button = element("button", { type: "button", className: "quiet copy", textContent: label });
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      announce("Copied");
    } catch (failure) {
      announce("Copying is not allowed here: select the text instead");
    }
  });
  return button;
}

function setupViewing() {
  const box = $("#lightbox");
  const caption = $("#copy-caption");
  if (caption) {
    caption.addEventListener("click", () => copyButton("", $("#current-caption").textContent).click());
    reveal("#copy-caption");
  }
  if (!box) return;
  const open = (source, description) => {
    $("img", box).src = source;
    $("img", box).alt = description;
    box.showModal();
  };
  for (const selector of ["#current-image", "#generated-image"]) {
    $(selector).addEventListener("click", () => open($(selector).src, $(selector).alt));
  }
  // A generation opens here, in the app, not as a bare PNG.
  $("#generation-gallery").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-lightbox]");
    if (!link) return;
    event.preventDefault();
    open(link.href, link.dataset.lightbox);
  });
}

// Deleting, always after a confirmation: an image (from its panel), a generation, the whole history.

function emptyGallery(gallery, kind) {
  if (!gallery.querySelector("li")) gallery.append(element("li", { className: "empty", textContent: `No ${kind} yet.` }));
}

// Buttons that only the script can work are shown by the part that makes them work.
function reveal(selector) {
  document.querySelectorAll(`${selector}[data-script-only]`).forEach((button) => { button.hidden = false; });
}

function setupDeleting() {
  const error = $(".gallery-error");
  if (!error) return;
  reveal("#delete-image");
  reveal("#clear-history");
  reveal(".delete-generation");
  const removeImage = $("#delete-image");
  removeImage.addEventListener("click", async () => {
    const imageId = $("#question-image-id").value;
    if (!imageId || !confirm("Delete this image, its caption and its questions? This cannot be undone.")) return;
    try {
      await call(`/images/${encodeURIComponent(imageId)}`, { method: "DELETE" });
      const link = $(`#image-gallery a[data-image-id="${CSS.escape(imageId)}"]`);
      if (link) link.closest("li").remove();
      emptyGallery($("#image-gallery"), "images");
      $("#image-panel").hidden = true;
      history.replaceState(null, "", location.pathname + location.search);
      announce("Image deleted");
      $("#upload-form button").focus();
    } catch (failure) {
      $(".error", $("#question-form")).textContent = failure.message;
    }
  });
  $("#generation-gallery").addEventListener("click", async (event) => {
    const button = event.target.closest("button.delete-generation");
    if (!button || !confirm("Delete this generated image? This cannot be undone.")) return;
    try {
      await call(`/generations/${encodeURIComponent(button.dataset.generationId)}`, { method: "DELETE" });
      button.closest("li").remove();
      emptyGallery($("#generation-gallery"), "generations");
      announce("Generated image deleted");
      error.textContent = "";
      $("#history-heading").focus();
    } catch (failure) {
      error.textContent = failure.message;
    }
  });
  $("#clear-history").addEventListener("click", async () => {
    if (!confirm("Delete every image and generation of yours, with their files? This cannot be undone.")) return;
    try {
      await call("/history", { method: "DELETE" });
      for (const [selector, kind] of [["#image-gallery", "images"], ["#generation-gallery", "generations"]]) {
        $(selector).replaceChildren();
        emptyGallery($(selector), kind);
      }
      document.querySelectorAll("a.more").forEach((more) => more.remove());
      $("#image-panel").hidden = true;
      history.replaceState(null, "", location.pathname + location.search);
      announce("History cleared");
      error.textContent = "";
      $("#history-heading").focus();
    } catch (failure) {
      error.textContent = failure.message;
    }
  });
}

function addToGallery(selector, item, atEnd = false) {
  const gallery = $(selector);
  const empty = $(".empty", gallery);
  if (empty) empty.remove();
  if (atEnd) gallery.append(item); else gallery.prepend(item);
}

async function reopen(imageId) {
  showImage(await call(`/images/${encodeURIComponent(imageId)}`));
  $("#image-panel").scrollIntoView({ block: "start" });
  $("#question-input").focus({ preventScroll: true });
}

function setupHistory() {
  const images = $("#image-gallery");
  if (!images) return;
  const error = $(".gallery-error");  // one current message for the history, not one more per failure
  images.addEventListener("click", async (event) => {
    const link = event.target.closest("a[data-image-id]");
    if (!link) return;
    event.preventDefault();
    try {
      await reopen(link.dataset.imageId);
      error.textContent = "";
    } catch (failure) {
      error.textContent = failure.message;
    }
  });
  const opened = /^#image=([\w-]+)$/.exec(location.hash);
  if (opened) reopen(opened[1]).catch((failure) => { error.textContent = failure.message; });
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
        error.textContent = "";
      } catch (failure) {
        error.textContent = failure.message;
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupUpload();
  setupQuestions();
  setupGenerate();
  setupHistory();
  setupDeleting();
  setupViewing();
});
