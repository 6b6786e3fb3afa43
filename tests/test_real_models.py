"""Opt-in (RUN_REAL_MODELS=1): the real Salesforce checkpoints, where the hub can be reached."""

import os

import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.skipif(os.environ.get("RUN_REAL_MODELS") != "1",
                                reason="set RUN_REAL_MODELS=1 to download and run the real BLIP checkpoints")


def a_photo() -> Image.Image:
    image = Image.new("RGB", (384, 384), (135, 206, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 260, 384, 384), fill=(34, 139, 34))
    draw.ellipse((280, 30, 350, 100), fill=(255, 215, 0))
    return image


def test_real_checkpoints_caption_and_answer():
    import models

    captioner = models.Captioner.from_pretrained("Salesforce/blip-image-captioning-base", "auto",
                                                 dict(num_beams=3, min_length=10, max_length=30))
    answerer = models.Answerer.from_pretrained("Salesforce/blip-vqa-base", "auto", dict(num_beams=3, max_length=10))
    caption = captioner.caption(a_photo())
    answer = answerer.answer(a_photo(), "what color is the sky?")
    print(caption, "|", answer)
    assert isinstance(caption, str) and len(caption.split()) >= 3
    assert "blue" in answer
