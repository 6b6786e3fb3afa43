// Generation: the description and its options, a running clock, the result with its download link.
import { $, announce, busy, call, fieldsOf } from "./common.js";
import { addToGallery, generationItem } from "./gallery.js";

const SETTINGS = ["width", "height", "num_inference_steps", "negative_prompt", "guidance_scale", "seed"];

export function setupGenerate() {
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
