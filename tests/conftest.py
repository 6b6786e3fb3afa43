import io
import os

import pytest
from PIL import Image


class FakeCaptioner:
    """Records what each image looked like; answers a fixed caption."""

    def __init__(self):
        self.calls = []

    def prompt_fits(self, prompt):
        return True

    def token_count(self, text):
        return len(text.split())

    def model_input(self, image):
        return image

    def caption_batch(self, images, prompt=None, pause=None):
        for image in images:
            self.calls.append((image.mode, image.size, prompt))
            if pause:  # as the real one pauses between images (and layers and tokens) for a job's batch
                pause()
        return ["a fake caption"] * len(images)


class FakeContext:
    def __init__(self, image):
        self.image, self.nbytes = image, 1


class FakeAnswerer:
    """Records what each question's image looked like; answers a fixed answer."""

    def __init__(self):
        self.calls = []

    def model_input(self, image):
        return image

    def contexts(self, images):
        return [FakeContext(image) for image in images]

    def token_count(self, text):
        return len(text.split())

    def answer_batch(self, contexts, questions):
        self.calls += [(context.image.mode, context.image.size, q) for context, q in zip(contexts, questions)]
        return ["a fake answer"] * len(questions)


def image_bytes(fmt="PNG", mode="RGB", size=(40, 30), color=None, **save_args) -> bytes:
    """An image file of the given format, mode and size."""
    image = Image.new(mode, size, color if color is not None else 1)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


# The tests' Hugging Face hub and router, started before anything imports huggingface_hub, which
# reads HF_ENDPOINT once, when it is imported.
from fake_hf import FakeClock, FakeHuggingFace  # noqa: E402

HUGGING_FACE = FakeHuggingFace()
os.environ["HF_ENDPOINT"] = HUGGING_FACE.url
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)

from app import create_app  # noqa: E402


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory):
    """Tiny BLIP checkpoints with random weights, saved the way the real ones are."""
    from demo import random_blip

    return random_blip.save_random_blip(str(tmp_path_factory.mktemp("blip")))


@pytest.fixture(scope="session")
def tiny_models(tiny_blip):
    """The tiny checkpoints loaded through the real from_pretrained path, every few-row step as W·xᵀ (the path
    whose tokens the tests compare with transformers' own; which one is faster is the load's business)."""
    import models

    captioner = models.Captioner.from_pretrained(tiny_blip["caption"], "cpu",
                                                 dict(num_beams=3, min_length=5, max_length=12), few_row_linear="on")
    answerer = models.Answerer.from_pretrained(tiny_blip["vqa"], "cpu", dict(num_beams=3, max_length=6),
                                               few_row_linear="on")
    return captioner, answerer


@pytest.fixture
def fake_api():
    """The tests' own Hugging Face hub and inference router on 127.0.0.1, with nothing scripted yet."""
    HUGGING_FACE.reset()
    yield HUGGING_FACE
    HUGGING_FACE.release.set()


@pytest.fixture
def clock():
    """An injected clock that moves only when told (or when the client 'sleeps')."""
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path


@pytest.fixture
def make_app(data_dir):
    """Build apps over one data folder (so a second one is a restart)."""

    def make(captioner=None, answerer=None, **config):
        settings = {
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "UPLOAD_FOLDER": str(data_dir / "uploads"),
            "GENERATED_FOLDER": str(data_dir / "uploads" / "generated"),
            "HISTORY_FILE": str(data_dir / "history.json"),
            "JOB_WORKER": False,  # a test of jobs turns it on, and closes the runner
        }
        settings.update(config)
        return create_app(settings, captioner=captioner or FakeCaptioner(), answerer=answerer or FakeAnswerer())

    return make


@pytest.fixture
def app(make_app, tiny_models):
    """The app on the tiny BLIP models."""
    captioner, answerer = tiny_models
    return make_app(captioner, answerer)


@pytest.fixture
def client(app):
    return app.test_client()


def stored_files(data_dir) -> list[str]:
    """Every file under the data folder but the lock file, relative to it."""
    found = []
    for folder, _, names in os.walk(data_dir):
        for name in names:
            if not name.endswith(".lock"):
                found.append(os.path.relpath(os.path.join(folder, name), data_dir))
    return sorted(found)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session (tests/postgres.py); skipped where none is installed,
    except in CI, where `make test` installs it."""
    from postgres import ThrowawayPostgres

    try:
        server = ThrowawayPostgres().start()
    except FileNotFoundError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A new empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()


BACKENDS = ["json", "sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_target(request, tmp_path):
    """Where a history is kept, once for each backend: a JSON file's path or a database URL."""
    if request.param == "json":
        return str(tmp_path / "history.json")
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    return request.getfixturevalue("postgres_url")
