// History: the galleries, reopening an image, loading more, viewing large, and deleting (always after a
// confirmation): an image (from its panel), a generation, the whole history.
import { $, announce, call, element, made, reveal } from "./common.js";
import { showImage } from "./thread.js";

const GALLERY_PAGE = 12;

export function imageItem(record) {
  const link = element("a", { href: `/page/images/${encodeURIComponent(record.image_id)}` }, [
    element("img", { src: record.image_url, alt: "", loading: "lazy" }),
    element("span", { textContent: record.caption }),
  ]);
  link.dataset.imageId = record.image_id;
  return element("li", {}, [link, download(record.image_url, record.caption),
                            element("small", {}, [`${record.original_name || "pasted image"} · `,
                                                  made(record.created_at)])]);
}

export function generationItem(record) {
  const remove = element("button", { type: "button", className: "quiet danger delete-generation" },
                         ["Delete", element("span", { className: "visually-hidden", textContent: ` ${record.description}` })]);
  remove.dataset.generationId = record.generation_id;
  const link = element("a", { href: record.image_url }, [
    element("img", { src: record.image_url, alt: "", loading: "lazy" }),
    element("span", { textContent: record.description }),
  ]);
  link.dataset.lightbox = record.description;
  return element("li", {}, [link, download(record.image_url, record.description),
                            element("small", {}, [made(record.created_at)]), remove]);
}

function download(url, name) {
  return element("a", { className: "download", href: url, download: "" },
                 ["Download", element("span", { className: "visually-hidden", textContent: ` ${name}` })]);
}

export function addToGallery(selector, item, atEnd = false) {
  const gallery = $(selector);
  const empty = $(".empty", gallery);
  if (empty) empty.remove();
  if (atEnd) gallery.append(item); else gallery.prepend(item);
}

function emptyGallery(gallery, kind) {
  if (!gallery.querySelector("li")) gallery.append(element("li", { className: "empty", textContent: `No ${kind} yet.` }));
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

// Viewing an image large, in the app.
function setupLightbox() {
  const box = $("#lightbox");
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

export function setupGallery() {
  setupHistory();
  setupDeleting();
  setupLightbox();
}
