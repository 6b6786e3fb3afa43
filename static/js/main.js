// The page's behaviour: every form also works as a plain post; these modules make it answer in place, one a
// panel. A module script runs once the page is parsed (as `defer` did), so each part sets itself up at once.
import { setupGallery } from "./gallery.js";
import { setupGenerate } from "./generate.js";
import { setupJobs } from "./jobs.js";
import { setupThread } from "./thread.js";
import { setupUpload } from "./upload.js";

setupUpload();
setupThread();
setupGenerate();
setupGallery();
setupJobs();
