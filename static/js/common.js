// What every panel shares: finding and making elements, the fetch wrapper and its errors, the CSRF token,
// the busy state of a form, and the announcements for screen readers.

// What the page says for each error the API names: words for a person, not for a script.
export const MESSAGES = {
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
  csrf_failed: "This page has expired. Reload it and try again.",
  not_owner: "Only the browser that made it can delete it.",
};

export const $ = (selector, root = document) => root.querySelector(selector);

export function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

// The session's token for multipart posts, as the server-rendered forms carry it.
export function csrfToken(form) {
  const field = $("input[name=csrf_token]", form);
  return field ? field.value : "";
}

// Every answer is JSON; an error carries {"error", "code"}, and the page says it in a person's words (a panel
// may bring words of its own for its codes).
export async function call(url, options = {}, messages = {}) {
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
    const message = failureMessage(response.status, body, response.headers.get("Retry-After"), messages);
    throw Object.assign(new Error(message), { status: response.status, code: body && body.code });
  }
  return body;
}

// What the page says for an error answer: the words for its code, else for its kind of status.
export function failureMessage(status, body, retry, messages = {}) {
  const code = body && body.code;
  const message = messages[code] || MESSAGES[code] || (status >= 500
    ? "Something went wrong on the server. Try again in a moment."
    : "That did not work. Check what you entered and try again.");
  return retry ? `${message} (You can try again in ${retry} s.)` : message;
}

export function postJSON(url, fields) {
  return call(url, { method: "POST", body: JSON.stringify(fields),
                     headers: { Accept: "application/json", "Content-Type": "application/json" } });
}

// Tells a screen reader a result, once: "Caption: ...", "Answer: ...", "Image ready". A panel with news of
// its own (a running job's progress) has a region of its own, so that its news and the others' do not clobber.
export function announce(text, region = "#announcer") {
  const announcer = $(region);
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);
}

// Runs one request for a form: busy text, disabled buttons, the error beside the form.
export async function busy(form, label, work, { elapsed = false } = {}) {
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

export function fieldsOf(form) {
  const fields = {};
  for (const [name, value] of new FormData(form)) {
    if (name !== "csrf_token" && typeof value === "string" && value.trim() !== "") fields[name] = value.trim();
  }
  return fields;
}

// Buttons (and panels) that only the script can work are shown by the part that makes them work.
export function reveal(selector) {
  document.querySelectorAll(`${selector}[data-script-only]`).forEach((node) => { node.hidden = false; });
}

// Copying a caption or an answer.
export function copyButton(label, text) {
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

// When something was made, as the server renders it: "2026-11-25 10:00 UTC".
export function made(isoTime) {
  return element("time", { dateTime: isoTime, textContent: `${isoTime.slice(0, 16).replace("T", " ")} UTC` });
}
