// The current image, its caption and its thread of questions.
import { $, announce, busy, copyButton, element, fieldsOf, postJSON, reveal } from "./common.js";

const MAX_QUESTION = 500;

export function showImage(record, source) {
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

function setupCopyCaption() {
  const caption = $("#copy-caption");
  if (!caption) return;
  caption.addEventListener("click", () => copyButton("", $("#current-caption").textContent).click());
  reveal("#copy-caption");
}

export function setupThread() {
  setupQuestions();
  setupCopyCaption();
}
