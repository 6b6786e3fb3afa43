"""The batching worker, the context cache, and the exactness of the cached and batched paths."""

import threading
import time

import pytest
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering

from batcher import Batcher, QueueFull
from conftest import FakeAnswerer, FakeCaptioner
from errors import ModelBusy, ModelTimeout, ModelUnavailable
from model_service import ContextCache, ModelService
from speedups import FewRowLinear
from models import UnavailableModel


class Recorder:
    """A runner that records each batch it ran, and can hold the worker until released."""

    def __init__(self):
        self.batches = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, payloads):
        self.started.set()
        self.release.wait(30)
        self.batches.append(list(payloads))
        return [f"done {payload}" for payload in payloads]

    def hold(self):
        self.release.clear()
        self.started.clear()


def held(**options):
    """A batcher whose worker is busy with a first job ("first") until run.release is set."""
    run = Recorder()
    batcher = Batcher(**options)
    run.hold()
    batcher.submit(run, "hold", "first")
    run.started.wait(10)
    return batcher, run


class FrozenClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_jobs_of_one_group_queued_together_run_as_one_batch():
    batcher, run = held(max_batch=3, batch_wait=0)  # while the worker is busy, the rest queue up
    futures = [batcher.submit(run, group, index) for index, group in enumerate("aabaa", start=1)]
    run.release.set()
    assert [future.result(10) for future in futures] == [f"done {i}" for i in range(1, 6)]
    assert run.batches == [["first"], [1, 2, 4], [3], [5]]


def test_a_full_queue_refuses():
    batcher, run = held(max_queue=2, batch_wait=0)
    batcher.submit(run, "a", 1)
    batcher.submit(run, "a", 2)
    with pytest.raises(QueueFull):
        batcher.submit(run, "a", 3)
    run.release.set()


def test_a_cancelled_job_never_runs():
    batcher, run = held(batch_wait=0)
    gone = batcher.submit(run, "b", "gone")
    kept = batcher.submit(run, "b", "kept")
    assert gone.cancel()
    run.release.set()
    assert kept.result(10) == "done kept"
    assert ["gone"] not in run.batches and all("gone" not in batch for batch in run.batches)


def test_an_error_reaches_every_caller_of_the_batch_and_the_worker_goes_on():
    def broken(payloads):
        raise RuntimeError("boom")

    batcher = Batcher(batch_wait=0)
    with pytest.raises(RuntimeError):
        batcher.submit(broken, "a", 1).result(10)
    assert batcher.submit(Recorder(), "a", 2).result(10) == "done 2"


def test_background_work_waits_for_the_queue_to_be_idle():
    clock = FrozenClock()
    run = Recorder()
    batcher = Batcher(batch_wait=0, background_idle=5, clock=clock)
    background = batcher.submit(run, "context", "later", background=True)
    assert batcher.submit(run, "a", "now").result(10) == "done now"
    assert not background.done()  # the clock has not moved since the person's job: no idle time yet
    clock.now += 5
    batcher.submit(run, "context", "nudge", background=True)  # wakes the worker without new interactive work
    assert background.result(10) == "done later"
    assert run.batches[0] == ["now"] and ["later"] in run.batches


def test_background_work_runs_newest_first():
    batcher, run = held(batch_wait=0, background_idle=0)
    jobs = [batcher.submit(run, "context", name, background=True) for name in ("old", "new")]
    run.release.set()
    for job in jobs:
        job.result(10)
    assert run.batches == [["first"], ["new"], ["old"]]


def test_background_work_past_its_bound_pushes_out_the_oldest():
    batcher, run = held(batch_wait=0, background_idle=0, max_background=3)
    jobs = [batcher.submit(run, "context", index, background=True) for index in range(10)]
    assert batcher.waiting_in_background() == 3
    assert [job.cancelled() for job in jobs] == [True] * 7 + [False] * 3
    run.release.set()
    assert [job.result(10) for job in jobs[7:]] == ["done 7", "done 8", "done 9"]
    assert batcher.waiting_in_background() == 0


def test_interactive_work_goes_before_background_work():
    batcher, run = held(batch_wait=0, background_idle=0)
    background = batcher.submit(run, "context", "background", background=True)
    interactive = batcher.submit(run, "a", "person")
    run.release.set()
    background.result(10)
    interactive.result(10)
    assert run.batches == [["first"], ["person"], ["background"]]


def test_bulk_work_runs_in_batches_after_people_and_background_work():
    batcher, run = held(max_batch=3, batch_wait=0, background_idle=0)
    bulk = [batcher.submit(run, ("caption", None), index, bulk=True) for index in range(5)]
    background = batcher.submit(run, "context", "background", background=True)
    person = batcher.submit(run, "a", "person")
    run.release.set()
    for future in [*bulk, background, person]:
        future.result(10)
    assert run.batches == [["first"], ["person"], ["background"], [0, 1, 2], [3, 4]]


def test_a_person_waits_for_one_bulk_batch_at_most():
    batcher, run = Batcher(max_batch=2, batch_wait=0, background_idle=0), Recorder()
    run.hold()
    bulk = [batcher.submit(run, "caption", index, bulk=True) for index in range(6)]
    run.started.wait(10)  # the first bulk batch is running
    person = batcher.submit(run, "a", "person")
    run.release.set()
    person.result(10)
    for future in bulk:
        future.result(10)
    assert run.batches == [[0, 1], ["person"], [2, 3], [4, 5]]


def test_bulk_work_waits_while_people_keep_the_models_busy():
    clock = FrozenClock()
    run = Recorder()
    batcher = Batcher(batch_wait=0, background_idle=5, clock=clock)
    assert batcher.submit(run, "a", "question").result(10) == "done question"
    bulk = batcher.submit(run, "caption", "item", bulk=True)
    assert batcher.submit(run, "a", "follow-up").result(10) == "done follow-up"
    assert not bulk.done() and batcher.waiting_in_bulk() == 1  # no idle time since the person's last request
    clock.now += 5
    batcher.submit(run, "context", "nudge", background=True)  # wakes the worker
    assert bulk.result(10) == "done item"
    assert run.batches.index(["item"]) > run.batches.index(["follow-up"])


def test_a_bulk_batch_lets_the_people_it_allows_in_between_its_steps():
    batcher, order = Batcher(max_batch=4, batch_wait=0, background_idle=0), []
    step, go_on = threading.Event(), threading.Event()

    def bulk_run(payloads):
        for payload in payloads:
            order.append(payload)
            step.set()
            assert go_on.wait(10)
            batcher.let_people_in(lambda group: group == "answer")
        return payloads

    def person(payloads):
        order.extend(payloads)
        return payloads

    bulk = [batcher.submit(bulk_run, "caption", f"image {index}", bulk=True) for index in range(3)]
    assert step.wait(10)  # the bulk batch is at its first step
    question = batcher.submit(person, "answer", "question")
    upload = batcher.submit(person, "caption-now", "upload")  # another group: it waits for the batch's end
    go_on.set()
    assert question.result(10) == "question" and upload.result(10) == "upload"
    assert [future.result(10) for future in bulk] == ["image 0", "image 1", "image 2"]
    assert order == ["image 0", "question", "image 1", "image 2", "upload"]
    with pytest.raises(RuntimeError):
        batcher.let_people_in(lambda group: True)  # only inside a batch, on the worker's thread


def test_a_question_is_answered_in_the_middle_of_a_job_s_batch():
    captioner, answerer = PausingCaptioner(), FakeAnswerer()
    service = ModelService(captioner, answerer, batch_wait=0, background_idle=0)
    captioner.waiting = lambda: service.batcher.waiting() > 0
    captioner.answered = lambda: bool(answerer.calls)
    captions = service.caption_in_bulk(["a", "b", "c"])
    assert captioner.first_image.wait(10)
    answered = []
    thread = threading.Thread(target=lambda: answered.append(service.answer("i", lambda: Image.new("RGB", (8, 8)),
                                                                            "what?")))
    thread.start()
    captioner.go_on.set()
    thread.join(10)
    assert answered == ["a fake answer"] and [future.result(10) for future in captions] == ["caption"] * 3
    assert captioner.answered_at == 1  # after the first image, not after the batch


class PausingCaptioner(FakeCaptioner):
    """Captions a batch image by image, pausing after each; the first waits until the test lets it go on."""

    def __init__(self):
        super().__init__()
        self.first_image, self.go_on, self.answered_at = threading.Event(), threading.Event(), None

    def caption_batch(self, images, prompt=None, pause=None):
        for index, _ in enumerate(images):
            if index == 0:
                self.first_image.set()
                assert self.go_on.wait(10)
                deadline = time.monotonic() + 10
                while not self.waiting() and time.monotonic() < deadline:
                    time.sleep(0.01)  # until the question is queued
            pause()
            if self.answered_at is None and self.answered():
                self.answered_at = index + 1
        return ["caption"] * len(images)


def test_close_lets_the_running_batch_finish_and_cancels_the_rest():
    batcher, run = held(batch_wait=0)
    queued = batcher.submit(run, "a", "queued")
    closer = threading.Thread(target=batcher.close)
    closer.start()
    run.release.set()
    closer.join(10)
    assert run.batches == [["first"]] and queued.cancelled()
    with pytest.raises(QueueFull):
        batcher.submit(run, "a", "late")


class Sized:
    def __init__(self, nbytes):
        self.nbytes = nbytes


def test_context_cache_is_an_lru_bounded_in_bytes():
    cache = ContextCache(max_bytes=100)
    cache.put("a", Sized(40))
    cache.put("b", Sized(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", Sized(40))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 80
    cache.put("huge", Sized(101))
    assert cache.get("huge") is None and cache.bytes == 80


# The service on the tiny BLIP models: the cached and batched paths give the baseline's tokens.

class Baseline:
    """What peer apps do: processor, then generate, on models loaded plainly (no FewRowLinear)."""

    def __init__(self, paths, captioner, answerer):
        self.captioner = BlipForConditionalGeneration.from_pretrained(paths["caption"]).eval()
        self.answerer = BlipForQuestionAnswering.from_pretrained(paths["vqa"]).eval()
        self.wrappers = {"caption": captioner, "vqa": answerer}  # their processors and generation settings

    def caption(self, image, prompt=None):
        return self._generate(self.captioner, self.wrappers["caption"], image, prompt)

    def answer(self, image, question):
        return self._generate(self.answerer, self.wrappers["vqa"], image, question)

    @staticmethod
    def _generate(model, wrapper, image, text):
        inputs = wrapper.processor(images=image, text=text, return_tensors="pt")
        with torch.inference_mode():
            tokens = model.generate(**inputs, **wrapper.generation)
        return wrapper.processor.decode(tokens[0], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def baseline(tiny_blip, tiny_models):
    return Baseline(tiny_blip, *tiny_models)


IMAGES = [Image.effect_noise((60 + 7 * i, 50), 30 + 10 * i).convert("RGB") for i in range(6)]


@pytest.mark.parametrize("prompt", [None, "a photography of"])
def test_cached_path_equals_the_baseline(tiny_models, baseline, prompt):
    captioner, answerer = tiny_models
    for model in (captioner.model, answerer.model):  # the decoders run the few-row path being checked
        assert any(isinstance(layer, FewRowLinear) for layer in model.text_decoder.modules())
    service = ModelService(captioner, answerer, batch_wait=0)
    for index, image in enumerate(IMAGES[:3]):
        assert service.caption(service.caption_input(image), prompt) == baseline.caption(image, prompt)
        for question in ("what color is it?", "how many cats are there in the picture?"):
            got = service.answer(f"image-{index}", lambda image=image: image, question)
            assert got == baseline.answer(image, question)
    assert len(service.cache) == 3


@pytest.mark.parametrize("prompt", [None, "a photography of"])
def test_a_job_s_pausing_batch_equals_the_baseline_and_pauses_at_every_layer_and_token(tiny_models, baseline, prompt):
    captioner, _ = tiny_models
    inputs = [captioner.model_input(image) for image in IMAGES[:3]]
    pauses = []
    captions = captioner.caption_batch(inputs, prompt, pause=lambda: pauses.append(1))
    assert captions == [baseline.caption(image, prompt) for image in IMAGES[:3]]
    layers = len(captioner.model.vision_model.encoder.layers)
    assert len(pauses) >= 3 * layers + 1  # each image's vision layers, then each token
    assert not any(layer._forward_hooks for layer in captioner.model.vision_model.encoder.layers)  # hooks removed


def test_batched_questions_equal_the_unbatched_ones(tiny_models, baseline):
    captioner, answerer = tiny_models
    batches = []

    class Watched:
        """The tiny answerer, recording the size of each batch it answers."""

        def __getattr__(self, name):
            return getattr(answerer, name)

        def answer_batch(self, contexts, questions):
            batches.append(len(questions))
            return answerer.answer_batch(contexts, questions)

    service = ModelService(captioner, Watched(), batch_wait=0.5, max_batch=6)
    questions = ["what color is the car?", "is it?", "how many cats are there in the picture?",
                 "what color is the dog?", "where?", "is the sea blue or green today?"]
    lengths = {len(answerer.processor.tokenizer(question)["input_ids"]) for question in questions}
    assert len(lengths) > 2  # questions of different lengths share a batch, padded nowhere
    results = [None] * 6

    def ask(index):
        results[index] = service.answer(f"i{index}", lambda: IMAGES[index], questions[index])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert max(batches) > 1  # they did share a batch
    assert results == [baseline.answer(IMAGES[i], questions[i]) for i in range(6)]


def test_batched_captions_equal_the_unbatched_ones(tiny_models, baseline):
    captioner, answerer = tiny_models
    inputs = [captioner.model_input(image) for image in IMAGES]
    assert captioner.caption_batch(inputs) == [baseline.caption(image) for image in IMAGES]
    assert captioner.caption_batch(inputs[:3], "a photography of") == [
        baseline.caption(image, "a photography of") for image in IMAGES[:3]]


def test_an_evicted_context_is_recomputed_from_the_stored_image(tiny_models):
    captioner, answerer = tiny_models
    one = answerer.contexts([answerer.model_input(IMAGES[0])])[0].nbytes
    service = ModelService(captioner, answerer, cache_bytes=one, batch_wait=0)
    loads = []

    def loader(index):
        def load():
            loads.append(index)
            return IMAGES[index]
        return load

    first = service.answer("a", loader(0), "what is it?")
    service.answer("b", loader(1), "what is it?")
    assert service.cache.get("a") is None  # evicted by b
    assert service.answer("a", loader(0), "what is it?") == first
    assert loads == [0, 1, 0]


def test_prepare_computes_the_context_in_the_background(tiny_models, baseline):
    captioner, answerer = tiny_models
    service = ModelService(captioner, answerer, batch_wait=0, background_idle=0)
    service.prepare("p", lambda: IMAGES[2]).result(30)
    assert service.cache.get("p") is not None

    def must_not_load():
        raise AssertionError("the prepared context was not used")

    assert service.answer("p", must_not_load, "what is it?") == baseline.answer(IMAGES[2], "what is it?")


def test_busy_queue_gives_503_with_retry_after(tiny_models):
    service = ModelService(*tiny_models)
    service.batcher, run = held(max_queue=1, batch_wait=0)
    service.batcher.submit(run, "hold", 1)
    with pytest.raises(ModelBusy) as refused:
        service.caption(IMAGES[0])
    assert refused.value.status == 503 and int(refused.value.headers["Retry-After"]) >= 1
    run.release.set()


def test_a_caller_who_waited_too_long_or_left_takes_the_job_out(tiny_models):
    captioner, answerer = tiny_models
    service = ModelService(captioner, answerer, timeout=0)
    service.batcher, run = held(batch_wait=0)
    with pytest.raises(ModelTimeout) as timed_out:
        service.caption(IMAGES[0])
    assert timed_out.value.status == 504 and timed_out.value.code == "model_timeout"
    patient = ModelService(captioner, answerer, timeout=60)
    patient.batcher = service.batcher
    with pytest.raises(ModelTimeout) as left:
        patient.caption(IMAGES[0], gave_up=lambda: True)
    assert left.value.code == "client_gone"
    assert service.batcher.waiting() == 0  # both jobs were taken out before they ran
    run.release.set()


def test_an_unavailable_model_is_refused_before_queueing(tiny_models):
    captioner, _ = tiny_models
    service = ModelService(captioner, UnavailableModel("vqa", "not loaded: point VQA_MODEL at a copy"))
    with pytest.raises(ModelUnavailable):
        service.answer("x", lambda: IMAGES[0], "why?")
    assert service.prepare("x", lambda: IMAGES[0]) is None
