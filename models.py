"""BLIP wrappers: Captioner and Answerer. Plain values in and out; no Flask inside."""

import logging

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor

from errors import ModelUnavailable

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    """The GPU when torch sees one and device is auto, else what device names."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class BlipModel:
    """A BLIP model with its processor, on one device, in eval mode."""

    model_class = None
    ready = True

    def __init__(self, model, processor, *, name: str = "", generation: dict | None = None):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.generation = dict(generation or {})
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @classmethod
    def from_pretrained(cls, name: str, device: str = "auto", generation: dict | None = None):
        """Load a hub id or a local directory: fp16 on a GPU, fp32 on the CPU."""
        target = pick_device(device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        processor = BlipProcessor.from_pretrained(name)
        model = cls.model_class.from_pretrained(name, dtype=dtype).to(target)
        return cls(model, processor, name=name, generation=generation)

    def _generate(self, image: Image.Image, text: str | None) -> str:
        inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, **self.generation)
        return self.processor.decode(tokens[0], skip_special_tokens=True).strip()


class Captioner(BlipModel):
    """Image captioning with BlipForConditionalGeneration."""

    model_class = BlipForConditionalGeneration

    def caption(self, image: Image.Image, prompt: str | None = None) -> str:
        """A caption of the image; with a prompt, its continuation (the prompt kept at the front)."""
        return self._generate(image, prompt or None)


class Answerer(BlipModel):
    """Visual question answering with BlipForQuestionAnswering."""

    model_class = BlipForQuestionAnswering

    def answer(self, image: Image.Image, question: str) -> str:
        """A short answer to a question about the image."""
        return self._generate(image, question)


class UnavailableModel:
    """Stands where a model failed to load: says why, and refuses every call with 503."""

    ready = False

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message

    def caption(self, image: Image.Image, prompt: str | None = None) -> str:
        """Refuse: the captioning model is not loaded."""
        raise ModelUnavailable(self.message)

    def answer(self, image: Image.Image, question: str) -> str:
        """Refuse: the question answering model is not loaded."""
        raise ModelUnavailable(self.message)


def load(kind: type[BlipModel], name: str, setting: str, device: str, generation: dict):
    """Load a model, or an UnavailableModel that explains the failure; the server starts either way."""
    try:
        model = kind.from_pretrained(name, device, generation)
    except Exception as error:  # any failure to load leaves the server up, with the reason on record
        message = (
            f"the model '{name}' could not be loaded ({type(error).__name__}): point {setting} at a "
            "local copy of it, or connect to the internet once so the hub can download it"
        )
        log.error(message)
        log.debug("loading %s failed", name, exc_info=True)
        return UnavailableModel(name, message)
    log.info("loaded %s from %s on %s (%s)", kind.__name__, name, model.device, model.dtype)
    return model
