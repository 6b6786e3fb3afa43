// Upload: choose, drop or paste a file, check it, preview it, caption it.
import { $, announce, busy, call, csrfToken } from "./common.js";
import { addToGallery, imageItem } from "./gallery.js";
import { showImage } from "./thread.js";

const MAX_BYTES = 16 * 1024 * 1024;
const HEAD_BYTES = 512;  // enough for every signature below, and for an SVG's XML declaration and comments

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

export function setupUpload() {
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
        fields.append("csrf_token", csrfToken(form));
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
