"""BLIP wrappers: Captioner and Answerer. Plain values in and out; no Flask inside.

Each splits its work where the image stops mattering, so that what depends on the image alone
can be computed once and reused: the vision embedding for captions, and for questions the VQA
vision embedding together with the text encoder's cross-attention keys and values over it.
The products are the ones BlipForConditionalGeneration.generate and BlipForQuestionAnswering.generate
compute, in the same order, so in fp32 the tokens equal theirs. speedups.py makes them cheaper without
changing a token: FewRowLinear where measured faster on the CPU, the decoder's cross-attention keys and
values once per request instead of once per beam, cached keys and values handed on without a copy, and
the vision encoder's attention through torch's fused kernel. All of torch's math runs in the batcher's
one thread (in_passing_thread says why).
"""

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from transformers import (BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor, StoppingCriteria,
                          StoppingCriteriaList)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.image_processing_backends import PilBackend

from speedups import (HeldCache, PerRequestCrossCache, choose_linears, described, fuse_vision_attention,
                      share_cross_attention)

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    """The GPU when torch sees one and device is auto, else what device names."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            flags = set(next((line for line in file if line.startswith("flags")), "").split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pick_dtype(device: torch.device, fast: bool) -> torch.dtype:
    """fp32 on the CPU unless fast is asked and the CPU does bf16 natively; fp16 on a GPU."""
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if fast and cpu_has_fast_bf16() else torch.float32


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
        self.text_config = model.config.text_config
        share_cross_attention(model.text_decoder)
        fuse_vision_attention(model.vision_model)

    @classmethod
    def from_pretrained(cls, name: str, device: str = "auto", generation: dict | None = None, fast: bool = False,
                        local_files_only: bool = False, *, few_row_linear: str = "auto", max_batch: int = 8):
        """Load a hub id or a local directory: fp16 on a GPU, fp32 on the CPU (bf16 if fast and native).

        On the CPU the text decoder's linear layers take, for each row count its beam-search steps have
        (num_beams x 1 to max_batch requests), the product measured faster (few_row_linear "auto"), or
        W·xᵀ ("on") or x·Wᵀ ("off") for all; the choice is logged in one line.
        """
        target = pick_device(device)
        processor = BlipProcessor.from_pretrained(name, local_files_only=local_files_only)
        model = cls.model_class.from_pretrained(name, dtype=pick_dtype(target, fast),
                                                local_files_only=local_files_only).to(target)
        if target.type == "cpu":
            beams = (generation or {}).get("num_beams", 1)
            started = time.perf_counter()
            choices = choose_linears(model.text_decoder, [beams * n for n in range(1, max_batch + 1)], few_row_linear)
            log.info("%s decoder, FEW_ROW_LINEAR=%s (%.1f s): %s", cls.__name__, few_row_linear,
                     time.perf_counter() - started, described(choices))
        return cls(model, processor, name=name, generation=generation)

    def token_count(self, text: str) -> int:
        """How many tokens of this model's tokenizer the text is, without the special ones."""
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def model_input(self, image: Image.Image) -> np.ndarray:
        """One image as the model takes it: its processor's pixel values, (1, 3, height, width), float32.

        Small whatever the image's size, so that requests waiting for the model hold this, not the image.
        A NumPy array, so that the request's thread computes nothing with torch (see in_passing_thread).
        A PIL processor's first step is PIL's resize to a fixed size; done here on the image itself, it
        gives the same pixels without the processor's two full-size copies of a large upload.
        """
        processor = self.processor.image_processor
        size = processor.size
        if isinstance(processor, PilBackend) and processor.do_resize and size.height and size.width:
            image = image.resize((size.width, size.height), processor.resample)
        return self.processor(images=[image], return_tensors="np")["pixel_values"]

    def embed(self, inputs: list[np.ndarray], pause: Callable[[], None] | None = None) -> torch.Tensor:
        """The vision model's embeddings of a batch of model inputs: (batch, image tokens, hidden).

        With pause, the images go one at a time and pause() is called after each of the vision model's layers
        (a person's work may run there); the vision model gains little from batching on a CPU.
        """
        if pause is not None:
            layers = self.model.vision_model.encoder.layers
            hooks = [layer.register_forward_hook(lambda *_: pause()) for layer in layers]
            try:
                return torch.cat([self.embed([one]) for one in inputs])
            finally:
                for hook in hooks:
                    hook.remove()
        pixels = torch.from_numpy(np.concatenate(inputs)).to(self.device, self.dtype)
        with torch.inference_mode():
            return self.model.vision_model(pixel_values=pixels)[0]

    def _decode(self, prompt_ids: torch.Tensor, attention_mask, cross: PerRequestCrossCache,
                pause: Callable[[], None] | None = None) -> list[str]:
        """The text decoder's generation, attending to each request's encoder states through cross, decoded to text;
        with pause, pause() is called after each token."""
        # The keys and values over the encoder states come from cross; the decoder is given a one-token stand-in
        # for the states only so that its layers run their cross-attention.
        count = prompt_ids.shape[0]
        stand_in = torch.zeros(count, 1, self.text_config.encoder_hidden_size, dtype=self.dtype, device=self.device)
        mask = torch.ones(count, 1, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            tokens = self.model.text_decoder.generate(
                input_ids=prompt_ids, attention_mask=attention_mask,
                eos_token_id=self.text_config.sep_token_id, pad_token_id=self.text_config.pad_token_id,
                encoder_hidden_states=stand_in, encoder_attention_mask=mask,
                past_key_values=EncoderDecoderCache(DynamicCache(), cross),
                stopping_criteria=StoppingCriteriaList([Pausing(pause)] if pause else []), **self.generation)
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]

    def decoder_cross_cache(self, states: torch.Tensor, lengths: list[int] | None = None) -> PerRequestCrossCache:
        """The decoder's cross-attention keys and values over encoder states (requests, longest, hidden), each
        request's own length in lengths (all of the states when None)."""
        keys, values = cross_keys_values(self.model.text_decoder.bert.encoder.layer, states)
        return PerRequestCrossCache(keys, values, lengths or [states.shape[1]] * states.shape[0])


class Pausing(StoppingCriteria):
    """A stopping criterion that never stops generation: after each token it calls pause(), in which other work
    may run in the same thread (transformers' StoppingCriteria is the one hook generate() has between tokens)."""

    def __init__(self, pause: Callable[[], None]):
        self.pause = pause

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.pause()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def cross_keys_values(layers, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each BLIP text layer's cross-attention keys and values over states (batch, length, hidden):
    two lists with one (batch, heads, length, head size) tensor a layer."""
    keys, values = [], []
    with torch.inference_mode():
        for layer in layers:
            attention = layer.crossattention.self
            shape = (*states.shape[:-1], -1, attention.attention_head_size)
            keys.append(attention.key(states).view(shape).transpose(1, 2))
            values.append(attention.value(states).view(shape).transpose(1, 2))
    return keys, values


class Captioner(BlipModel):
    """Image captioning with BlipForConditionalGeneration."""

    model_class = BlipForConditionalGeneration

    def caption(self, image: Image.Image, prompt: str | None = None) -> str:
        """A caption of the image; with a prompt, its continuation (the prompt kept at the front)."""
        return self.caption_batch([self.model_input(image)], prompt)[0]

    def prompt_fits(self, prompt: str) -> bool:
        """Whether a caption can go on after the prompt: its tokens stay under the generation's max_length."""
        length = len(self.processor.tokenizer(prompt)["input_ids"]) - 1  # [CLS] becomes BOS, [SEP] goes
        return length < self.generation.get("max_length", self.model.generation_config.max_length)

    def caption_batch(self, inputs: list[np.ndarray], prompt: str | None = None,
                      pause: Callable[[], None] | None = None) -> list[str]:
        """Captions of several images (their model inputs) that share one prompt (or none), as one batch; with
        pause, pause() is called after each vision layer of each image and after each token (see embed)."""
        embeds = self.embed(inputs, pause)
        count = len(inputs)
        if prompt:
            # As BlipForConditionalGeneration.generate: [CLS] becomes the decoder's BOS, the final [SEP] goes.
            tokens = self.processor.tokenizer([prompt] * count, return_tensors="pt").to(self.device)
            prompt_ids = tokens["input_ids"].clone()
            prompt_ids[:, 0] = self.text_config.bos_token_id
            return self._decode(prompt_ids[:, :-1], tokens["attention_mask"][:, :-1], self.decoder_cross_cache(embeds),
                                pause)
        prompt_ids = torch.full((count, 1), self.text_config.bos_token_id, dtype=torch.long, device=self.device)
        return self._decode(prompt_ids, None, self.decoder_cross_cache(embeds), pause)


@dataclass
class ImageContext:
    """What a question needs of one image: the VQA vision embedding and, for each text encoder
    layer, its cross-attention keys and values over that embedding."""

    embeds: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        tensors = [self.embeds, *self.keys, *self.values]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


class Answerer(BlipModel):
    """Visual question answering with BlipForQuestionAnswering."""

    model_class = BlipForQuestionAnswering

    def answer(self, image: Image.Image, question: str) -> str:
        """A short answer to a question about the image."""
        return self.answer_batch(self.contexts([self.model_input(image)]), [question])[0]

    def contexts(self, inputs: list[np.ndarray]) -> list[ImageContext]:
        """Each image's context for questions (from its model input): computed once, reusable for any question."""
        embeds = self.embed(inputs)
        keys, values = cross_keys_values(self.model.text_encoder.encoder.layer, embeds)
        # Each context gets storage of its own, so that the cache's byte count is what it holds.
        return [
            ImageContext(embeds[i : i + 1].clone(), [k[i : i + 1].clone() for k in keys],
                         [v[i : i + 1].clone() for v in values])
            for i in range(len(inputs))
        ]

    def answer_batch(self, contexts: list[ImageContext], questions: list[str]) -> list[str]:
        """Answers to questions of any lengths, each about its own image context, decoded as one batch.

        The text encoder reads questions of one token length together, so that no padding changes a result;
        the decoder attends to each question's states alone (PerRequestCrossCache), so they need none either.
        """
        question_ids = self.processor.tokenizer(questions)["input_ids"]
        by_length: dict[int, list[int]] = {}
        for index, ids in enumerate(question_ids):
            by_length.setdefault(len(ids), []).append(index)
        states = torch.zeros(len(questions), max(by_length), self.text_config.hidden_size, dtype=self.dtype,
                             device=self.device)
        for length, indices in by_length.items():
            states[indices, :length] = self.encode_questions([contexts[i] for i in indices],
                                                             [question_ids[i] for i in indices])
        start = torch.full((len(questions), 1), self.model.decoder_start_token_id, dtype=torch.long,
                           device=self.device)
        return self._decode(start, None, self.decoder_cross_cache(states, [len(ids) for ids in question_ids]))

    def encode_questions(self, contexts: list[ImageContext], question_ids: list[list[int]]) -> torch.Tensor:
        """The text encoder's states of questions of one length (token ids), each over its own image:
        (questions, length, hidden)."""
        input_ids = torch.tensor(question_ids, dtype=torch.long, device=self.device)
        embeds = stack([context.embeds for context in contexts])
        layers = range(len(contexts[0].keys))
        cross = HeldCache([stack([context.keys[index] for context in contexts]) for index in layers],
                          [stack([context.values[index] for context in contexts]) for index in layers])
        image_mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            # The cross-attention keys and values come from the cache, marked as already computed.
            return self.model.text_encoder(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                encoder_hidden_states=embeds, encoder_attention_mask=image_mask,
                past_key_values=EncoderDecoderCache(DynamicCache(), cross), return_dict=False)[0]


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors joined along the batch; a single one as it is (nothing writes to the cached tensors)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class UnavailableModel:
    """Stands where a model failed to load: not ready, with the reason that requests are refused with."""

    ready = False

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message


def in_passing_thread(work: Callable[[], object]):
    """work() run in a thread of its own that ends with it; its result, or the exception it raised.

    libgomp, the OpenMP under torch's CPU math, gives every thread that starts parallel work a team of
    threads of its own, kept for as long as that thread lives; once more of them live than the CPU has
    cores, every team sleeps between parallel regions instead of spinning, and a decoding step, hundreds
    of small regions, gets slower (measured on 2 cores: one answer 0.29 s alone, 0.42 s once another
    live thread had run one torch operation). So the models' math runs in one thread, the batcher's;
    loading, which computes too (and measures, for FEW_ROW_LINEAR), runs in a thread that then ends.
    """
    outcome = {}

    def run():
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed to the caller, in its own thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="model-loading")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def share_cores(workers: int) -> int:
    """Give this process's torch its share of the cores, when several workers share them; return its threads."""
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(threads)
    return threads


def hub_reachable(endpoint: str, seconds: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers at all within a few seconds (any HTTP answer counts)."""
    import httpx2

    done, answered = threading.Event(), []

    def ask():
        try:
            httpx2.get(f"{endpoint}/api/models", params={"limit": 1}, timeout=seconds)
            answered.append(True)
        except httpx2.HTTPError:
            pass
        finally:
            done.set()

    threading.Thread(target=ask, name="hub-probe", daemon=True).start()
    done.wait(seconds + 1)  # a name lookup that hangs past the timeout counts as no answer
    return bool(answered)


def load(kind: type[BlipModel], source: str, setting: str, device: str, generation: dict, fast: bool = False,
         *, local: bool = False, hub_online: bool = True, few_row_linear: str = "auto", max_batch: int = 8):
    """Load a model, or an UnavailableModel that says what to do; the server starts either way.

    source is a local folder when local, else a hub id; with the hub offline only its local cache is read.
    """
    if local and not os.path.isdir(source):
        return unavailable(source, f"{setting}: no such folder '{source}': check the path (relative paths are taken "
                                   "from the app's folder), or give a hub id")
    try:
        model = kind.from_pretrained(source, device, generation, fast, local_files_only=not (local or hub_online),
                                     few_row_linear=few_row_linear, max_batch=max_batch)
    except Exception as error:  # any failure to load leaves the server up, with the reason on record
        log.debug("loading %s failed", source, exc_info=True)
        if local:
            return unavailable(source, f"{setting}: the folder '{source}' holds no loadable BLIP checkpoint "
                                       f"({type(error).__name__}): point it at a folder saved with save_pretrained")
        if not hub_online:
            return unavailable(source, f"{setting}: '{source}' is not in the local cache and the Hugging Face hub "
                                       f"cannot be reached: run `hf download {source}` on a connected machine and "
                                       f"copy its cache (~/.cache/huggingface) here, or point {setting} at a local "
                                       "folder; `make demo` runs the app without the weights")
        return unavailable(source, f"{setting}: the model '{source}' could not be loaded from the hub "
                                   f"({type(error).__name__}): check the id, or point {setting} at a local folder")
    log.info("loaded %s from %s on %s (%s)", kind.__name__, source, model.device, model.dtype)
    return model


def unavailable(name: str, message: str) -> UnavailableModel:
    """The stand-in for a model that could not be loaded, its reason logged once."""
    log.error(message)
    return UnavailableModel(name, message)
