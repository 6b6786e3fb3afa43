"""The benchmark's baseline: what peer apps do, for comparison with this app in one run.

Every request runs `processor(images=..., text=...)` then `model.generate(**inputs)` with the same
generation settings, in fp32, one request at a time under a lock. Served like the app, by gunicorn:
    gunicorn 'bench.baseline:create_baseline_app()'
with CAPTION_MODEL, VQA_MODEL and the generation settings in the environment.
"""

import io
import os
import threading
import uuid

import torch
from flask import Flask, jsonify, request
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor


def create_baseline_app() -> Flask:
    """A minimal captioning and question answering app, the plain transformers way."""
    env = os.environ
    caption_processor = BlipProcessor.from_pretrained(env["CAPTION_MODEL"])
    caption_model = BlipForConditionalGeneration.from_pretrained(env["CAPTION_MODEL"]).eval()
    vqa_processor = BlipProcessor.from_pretrained(env["VQA_MODEL"])
    vqa_model = BlipForQuestionAnswering.from_pretrained(env["VQA_MODEL"]).eval()
    caption_settings = dict(num_beams=int(env["CAPTION_NUM_BEAMS"]), min_length=int(env["CAPTION_MIN_LENGTH"]),
                            max_length=int(env["CAPTION_MAX_LENGTH"]))
    vqa_settings = dict(num_beams=int(env["VQA_NUM_BEAMS"]), min_length=int(env.get("VQA_MIN_LENGTH", 1)),
                        max_length=int(env["VQA_MAX_LENGTH"]))
    lock = threading.Lock()
    images = {}
    app = Flask(__name__)

    @app.post("/upload")
    def upload():
        image = Image.open(io.BytesIO(request.files["image"].read())).convert("RGB")
        with lock, torch.inference_mode():
            inputs = caption_processor(images=image, return_tensors="pt")
            tokens = caption_model.generate(**inputs, **caption_settings)
        image_id = str(uuid.uuid4())
        images[image_id] = image
        return jsonify(image_id=image_id, caption=caption_processor.decode(tokens[0], skip_special_tokens=True).strip()), 201

    @app.post("/question")
    def question():
        body = request.get_json()
        with lock, torch.inference_mode():
            inputs = vqa_processor(images=images[body["image_id"]], text=body["question"], return_tensors="pt")
            tokens = vqa_model.generate(**inputs, **vqa_settings)
        return jsonify(answer=vqa_processor.decode(tokens[0], skip_special_tokens=True).strip())

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", queue={"queued": 0, "background": 0})

    return app
