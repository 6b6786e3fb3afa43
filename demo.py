"""`make demo`: the whole app on tiny BLIP models with random weights, for a machine without the real ones."""

import logging
import os

import random_blip

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = os.environ.get("DEMO_MODELS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo-models")
    paths = random_blip.save_random_blip(folder)
    os.environ.update(CAPTION_MODEL=paths["caption"], VQA_MODEL=paths["vqa"], DEMO="1")
    from app import create_app

    demo = create_app()
    logging.getLogger("demo").warning("demo models with random weights: captions and answers are meaningless")
    demo.run(host=demo.config["HOST"], port=demo.config["PORT"], threaded=True)
