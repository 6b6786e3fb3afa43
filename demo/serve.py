"""`make demo`: the whole app on tiny BLIP models with random weights, for a machine without the real ones.

It runs Flask's development server, and keeps its data apart from the real app's: uploads,
generated images, history and session key live under DEMO_DATA (default demo-models/data), so
that random captions never reach the real history.
"""

import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the app's own modules

import random_blip  # noqa: E402  (beside this script)
from app import instance_secret_key  # noqa: E402
from errors import SettingError  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = ROOT
    folder = os.environ.get("DEMO_MODELS") or os.path.join(root, "demo-models")
    data = os.environ.get("DEMO_DATA") or os.path.join(folder, "data")
    paths = random_blip.save_random_blip(folder)
    os.environ.update(CAPTION_MODEL=paths["caption"], VQA_MODEL=paths["vqa"], DEMO="1")
    os.environ.setdefault("UPLOAD_FOLDER", os.path.join(data, "uploads"))
    os.environ.setdefault("GENERATED_FOLDER", os.path.join(data, "uploads", "generated"))
    os.environ.setdefault("HISTORY_FILE", os.path.join(data, "history.json"))
    from app import create_app

    try:
        os.environ.setdefault("SECRET_KEY", instance_secret_key(data))
        demo = create_app()
    except SettingError as error:  # as app.py does: one line, and the status gunicorn's master understands
        logging.getLogger("demo").error("cannot start: %s", error)
        sys.exit(error.exit_status)
    logging.getLogger("demo").warning("demo models with random weights: captions and answers are meaningless; "
                                      "its data is kept apart, in %s", data)
    demo.run(host=demo.config["HOST"], port=demo.config["PORT"], threaded=True)
