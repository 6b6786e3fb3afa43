"""HFClient: text-to-image through Hugging Face's inference providers, over a pool of rotating API keys.

huggingface_hub's InferenceClient speaks each provider's protocol (hf-inference, fal-ai, together,
replicate, nscale, wavespeed ...). What is the app's own stays here: which provider serves SD_MODEL,
what a known model cannot use, the key pool and its states, the deadline and retries, errors a person
can act on, and the image as it is kept: a PNG that carries how it was made. No Flask inside. Keys
never leave the key pool: every message from upstream is redacted before it is used.
"""

import functools
import io
import json
import logging
import random
import re
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable

import httpx2
from huggingface_hub import HfApi, InferenceClient, constants, set_client_factory
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError
from huggingface_hub.inference._providers import PROVIDERS
from huggingface_hub.utils import parse_ratelimit_headers
from PIL import Image, PngImagePlugin, UnidentifiedImageError

import images
from errors import InvalidInput, ModelNotServed, SettingError, UpstreamError, UpstreamRejected, UpstreamTimeout
from keys import Key, KeyPool, SharedStates

log = logging.getLogger(__name__)

ROUTER = "https://router.huggingface.co"
TASK = "text-to-image"
IMAGE_PROVIDERS = sorted(name for name, tasks in PROVIDERS.items() if TASK in tasks)
# A model that providers serve for text-to-image (not gated, Apache-2.0), offered when SD_MODEL is served by none.
SUGGESTED_MODEL = "black-forest-labs/FLUX.1-schnell"
MAX_PIXELS = 4096 * 4096
CREDIT_WORDS = re.compile(r"credit|balance|quota|exceeded your monthly|payment", re.IGNORECASE)
INVALID_TOKEN = re.compile(r"invalid (?:user |api )?(?:token|credentials)|token (?:is )?(?:invalid|expired)|"
                           r"expired token|unauthori[sz]ed", re.IGNORECASE)
# A 403 that is about the key (a token without the inference permission), not about the model.
KEY_NOT_PERMITTED = re.compile(r"permission|authentication method|scope", re.IGNORECASE)
# How huggingface_hub says (with a ValueError) that a provider does not serve a model for a task.
NOT_SERVED = re.compile(r"support|provider mapping", re.IGNORECASE)


# Where the router's calls go for the generation under way (HF_ROUTER_URL of the client making it).
router_url: ContextVar[str] = ContextVar("router_url", default=ROUTER)


class RouterTransport(httpx2.BaseTransport):
    """Sends calls meant for the Hugging Face router to router_url; every other call as it is."""

    def __init__(self):
        self.inner = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url, router = str(request.url), router_url.get().rstrip("/")
        if router != ROUTER and url.startswith(ROUTER + "/"):
            target = httpx2.URL(router + url[len(ROUTER):])
            headers = [(name, value) for name, value in request.headers.raw if name.lower() != b"host"]
            request = httpx2.Request(request.method, target, headers=[(b"Host", target.netloc), *headers],
                                     stream=request.stream, extensions=request.extensions)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@functools.cache
def install_client_factory() -> None:
    """huggingface_hub's HTTP client, made once through its client factory, with the RouterTransport.

    The library's own client would also refuse every call when HF_HUB_OFFLINE is set, which is meant
    for model downloads; this one leaves inference calls alone.
    """
    set_client_factory(lambda: httpx2.Client(transport=RouterTransport(), follow_redirects=True, timeout=None))


@dataclass(frozen=True)
class ModelLimits:
    """What a known model cannot use: parameters it ignores, and the inference steps every provider of it takes."""

    ignores: tuple[str, ...]
    steps: tuple[int, int]
    why: str


# Read from the models' cards and their providers' documentation (the README names them). A parameter a model
# ignores is refused rather than recorded as if it had had an effect; a step count outside what every documented
# provider of the model takes is refused too, before any paid call.
MODEL_LIMITS = {
    "black-forest-labs/FLUX.1-schnell": ModelLimits(
        ignores=("guidance_scale", "negative_prompt"), steps=(1, 4),
        why="it is timestep-distilled: 1 to 4 steps, and no classifier-free guidance, so no guidance scale "
            "and no negative prompt"),
}


@dataclass(frozen=True)
class Generated:
    """A generated image as it is kept, and the provider that made it."""

    file: images.Encoded
    provider: str


class HFClient:
    """Text-to-image on SD_MODEL through an inference provider, with retries that never blame a key unfairly."""

    def __init__(self, keys: list[str], model: str, *, provider: str = "auto", router_url: str = ROUTER,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 timeout: float = 120.0, deadline: float = 240.0, max_tries: int = 3,
                 exhausted_cooldown: float = 3600.0, key_states: SharedStates | None = None):
        if provider != "auto" and provider not in IMAGE_PROVIDERS:
            raise SettingError(f"HF_PROVIDER={provider!r}: use auto or one of {', '.join(IMAGE_PROVIDERS)}")
        self.pool = KeyPool(keys, clock, exhausted_cooldown, shared=key_states)
        self.model, self.provider = model, provider
        self.limits = next((limits for name, limits in MODEL_LIMITS.items() if name.lower() == model.lower()), None)
        self.clock, self.sleep = clock, sleep
        self.timeout, self.deadline, self.max_tries = timeout, deadline, max_tries
        self.providers: list[dict] | None = None  # the hub's answer: who serves the model, and how they are
        self.lookup_error: str | None = None
        self.router_url = router_url
        install_client_factory()

    def discover(self) -> None:
        """Ask the hub which providers serve the model for text-to-image; warn when none does."""
        try:
            info = HfApi().model_info(self.model, expand=["inferenceProviderMapping"], timeout=20)
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            self.lookup_error = (f"the hub has no model '{self.model}'" if status in (401, 404)
                                 else f"the hub could not be asked ({type(error).__name__})")
            log.warning("could not learn which inference providers serve SD_MODEL %s: %s", self.model,
                        self.lookup_error)
            return
        self.providers = [{"provider": mapping.provider, "status": mapping.status,
                           "supported": mapping.provider in IMAGE_PROVIDERS}
                          for mapping in info.inference_provider_mapping or [] if mapping.task == TASK]
        self.lookup_error = None
        if not self._usable():
            log.warning("SD_MODEL %s is served by no inference provider for text-to-image: /generate will refuse "
                        "until it names one that is (e.g. %s)", self.model, SUGGESTED_MODEL)
        else:
            log.info("SD_MODEL %s is served for text-to-image by %s", self.model,
                     ", ".join(f"{p['provider']} ({p['status']})" for p in self.providers))

    def discover_in_background(self) -> threading.Thread:
        """discover() on a thread of its own, so that the server never waits for the hub."""
        thread = threading.Thread(target=self.discover, name="provider-lookup", daemon=True)
        thread.start()
        return thread

    def status(self) -> dict:
        """What /healthz says of generation: the model, the provider setting and who serves the model."""
        return {"model": self.model, "provider": self.provider, "providers": self.providers,
                "lookup_error": self.lookup_error}

    def key_status(self) -> list[dict]:
        """The keys' states, each by position and fingerprint."""
        return self.pool.status()

    def generate(self, description: str, parameters: dict) -> Generated:
        """An image for the description; the errors say whose fault a failure was."""
        # What can be known here is checked before the first call to the hub or a provider.
        self.check_parameters(parameters)
        self.pool.check()
        provider = self._pick_provider()
        give_up_at = self.clock() + self.deadline
        failures = 0  # failures that were not a key's fault
        waited_for_loading = False
        while True:
            key = self.pool.take()
            remaining = give_up_at - self.clock()
            if remaining <= 0:
                raise timed_out()
            loading = None
            try:
                client = InferenceClient(provider=provider, api_key=key.secret, timeout=min(self.timeout, remaining))
                routed = router_url.set(self.router_url)
                try:
                    picture = client.text_to_image(description, model=self.model, **parameters)
                finally:
                    router_url.reset(routed)
                kept = self._keep(picture, description, parameters, provider)
            except HfHubHTTPError as error:
                problem = self._judge(key, error, provider)
                if problem is None:
                    continue  # the key's own failure: the next key, at once
                loading = loading_time(error.response)
            except (InferenceTimeoutError, httpx2.TimeoutException, TimeoutError):
                problem = timed_out()
            except (OSError, SyntaxError, Image.DecompressionBombError):  # Pillow, opening what came back
                raise not_an_image(provider) from None
            except httpx2.TransportError:
                problem = UpstreamError("the connection to the inference provider failed: try again later",
                                        code="upstream_unreachable")
            except StopIteration:  # provider="auto" over an empty mapping
                raise self._not_served() from None
            except ValueError as error:
                if isinstance(error, json.JSONDecodeError) or not NOT_SERVED.search(str(error)):
                    raise not_an_image(provider) from None
                raise self._not_served(provider) from None
            except (KeyError, IndexError, TypeError):  # an answer without the image where the protocol puts it
                raise not_an_image(provider) from None
            else:
                self.pool.succeeded(key)
                return Generated(kept, provider)
            if loading is not None and not waited_for_loading:
                waited_for_loading = True
                self.sleep(max(0.0, min(loading, give_up_at - self.clock() - 1)))
                continue
            failures += 1
            pause = 2.0 ** failures * random.uniform(0.5, 1.0)
            if failures >= self.max_tries or self.clock() + pause >= give_up_at:
                raise problem
            self.sleep(pause)

    def check_parameters(self, parameters: dict) -> None:
        """Refuse, with a 400 naming the field, a parameter SD_MODEL ignores or a step count it does not take."""
        if self.limits is None:
            return
        for name in self.limits.ignores:
            if name in parameters:
                raise InvalidInput(f"'{name}' has no effect on SD_MODEL '{self.model}' ({self.limits.why}): "
                                   "leave it out", code=f"invalid_{name}")
        low, high = self.limits.steps
        steps = parameters.get("num_inference_steps")
        if steps is not None and not low <= steps <= high:
            raise InvalidInput(f"'num_inference_steps' is {steps}, but SD_MODEL '{self.model}' takes {low} to {high} "
                               f"({self.limits.why}): send one of those, or leave it out for the provider's default",
                               code="invalid_num_inference_steps")

    def _pick_provider(self) -> str:
        """HF_PROVIDER, or for auto the first provider the hub maps the model to that is live (else any)."""
        if self.provider != "auto":
            return self.provider
        if self.providers is None:
            self.discover()
        if self.providers is None:
            raise UpstreamError(f"{self.lookup_error}, so no inference provider could be chosen for SD_MODEL "
                                f"'{self.model}': try again later, or name one in HF_PROVIDER",
                                code="provider_lookup_failed")
        usable = self._usable()
        if not usable:
            raise self._not_served()
        return next((p["provider"] for p in usable if p["status"] == "live"), usable[0]["provider"])

    def _usable(self) -> list[dict]:
        return [p for p in self.providers or [] if p["supported"]]

    def _not_served(self, provider: str | None = None, gone: str | None = None) -> ModelNotServed:
        """The model is served by no provider, not by the one named, or (gone: a 410's message) no longer by it."""
        others = [p["provider"] for p in self._usable() if p["provider"] != provider]
        if gone is not None:
            what = f"is no longer served by the provider {provider} (410 Gone: {gone})"
        else:
            what = f"is not served by {f'the provider {provider}' if provider else 'any inference provider'}"
        if provider and others:
            # After a 410, auto is no way out: it would pick the same provider again.
            hint = f"set HF_PROVIDER to one that serves it ({', '.join(others)})" + ("" if gone else " or auto")
        elif self.model.lower() == SUGGESTED_MODEL.lower():
            hint = "choose another SD_MODEL that providers serve (its page on huggingface.co lists them)"
        else:
            hint = f"choose an SD_MODEL that providers serve, e.g. {SUGGESTED_MODEL}"
        return ModelNotServed(f"SD_MODEL '{self.model}' {what} for text-to-image: {hint}")

    def _judge(self, key: Key, error: HfHubHTTPError, provider: str) -> UpstreamError | None:
        """None after a key's own failure; the error to retry; or raise one not to retry."""
        response = error.response
        status, message = response.status_code, self._message(response)
        if str(response.request.url).startswith(constants.ENDPOINT):  # the hub, asked for the model's providers
            if status in (401, 404):
                raise self._not_served()
            return UpstreamError(f"the Hugging Face hub failed ({status}: {message}): try again later")
        if status == 410:  # the provider withdrew the model: no key's fault, and asking again will not bring it back
            raise self._not_served(provider, gone=message)
        if status == 429:
            self.pool.cool(key, retry_after(response, self.clock()))
            return None
        if status == 401 or (status == 400 and INVALID_TOKEN.search(message)):
            self.pool.disable(key, f"invalid or expired ({status})")
            return None
        if status == 402 or (400 <= status < 500 and CREDIT_WORDS.search(message)):
            self.pool.exhaust(key)
            return None
        if status == 403 and KEY_NOT_PERMITTED.search(message):
            self.pool.disable(key, "not permitted to call inference providers (403)")
            return None
        if status == 403:
            raise UpstreamError(f"the inference provider refused SD_MODEL '{self.model}' (403: {message}): if the "
                                "model is gated, accept its conditions on its Hugging Face page with the account "
                                "of these keys, or choose another SD_MODEL", code="model_not_permitted")
        if status >= 500:
            return UpstreamError(f"the inference provider failed ({status}: {message}): try again later")
        if status in (400, 422):
            raise UpstreamRejected(f"the inference provider rejected the request: {message}")
        raise UpstreamError(f"the inference provider answered {status} ({message}): check SD_MODEL and HF_PROVIDER",
                            code="upstream_rejected")

    def _message(self, response: httpx2.Response) -> str:
        """The provider's own error message, short, with every fragment of a key hidden."""
        try:
            error = response.json().get("error", "") or response.json().get("detail", "")
            text = "; ".join(map(str, error)) if isinstance(error, list) else str(error)
        except (ValueError, AttributeError):
            text = response.text
        # Keys are hidden in the whole text before it is cut, so that no part of one survives the cut.
        return " ".join(self.pool.redact(text).split())[:300] or response.reason_phrase or "no message"

    def _keep(self, picture: Image.Image, description: str, parameters: dict, provider: str) -> images.Encoded:
        """The provider's image checked (PNG or JPEG, a sane size), re-encoded as a PNG carrying its settings."""
        try:
            if picture.format not in ("PNG", "JPEG", "MPO") or picture.width * picture.height > MAX_PIXELS:
                raise not_an_image(provider)
            picture.load()
            pixels = picture if picture.mode in ("RGB", "RGBA") else picture.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
            raise not_an_image(provider) from None
        settings = {"description": description, **parameters, "model": self.model, "provider": provider}
        text = PngImagePlugin.PngInfo()
        text.add_itxt("parameters", a1111_parameters(settings))
        text.add_itxt("generation", json.dumps(settings, ensure_ascii=False))
        buffer = io.BytesIO()
        pixels.save(buffer, "PNG", pnginfo=text)
        mime_type, extension = images.FORMATS["PNG"]
        return images.Encoded(buffer.getvalue(), mime_type, extension)


def a1111_parameters(settings: dict) -> str:
    """The settings as AUTOMATIC1111 writes them in a PNG's `parameters` text, which other tools read."""
    lines = [settings["description"]]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    named = [("Steps", settings.get("num_inference_steps")), ("CFG scale", settings.get("guidance_scale")),
             ("Seed", settings.get("seed")),
             ("Size", f"{settings['width']}x{settings['height']}" if "width" in settings and "height" in settings
              else None),
             ("Model", settings["model"]), ("Provider", settings["provider"])]
    lines.append(", ".join(f"{name}: {value}" for name, value in named if value is not None))
    return "\n".join(lines)


def timed_out() -> UpstreamTimeout:
    return UpstreamTimeout("the inference provider did not answer in time: try again later")


def not_an_image(provider: str) -> UpstreamError:
    return UpstreamError(f"the inference provider {provider} answered without a readable PNG or JPEG image of a "
                         "sane size: try again later")


def retry_after(response: httpx2.Response, now: float) -> float | None:
    """Seconds to wait from Retry-After (seconds or a date), else the RateLimit header's t= when r=0; else None."""
    value = response.headers.get("Retry-After", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            pass
    limit = parse_ratelimit_headers(response.headers)
    return float(limit.reset_in_seconds) if limit is not None and limit.remaining == 0 else None


def loading_time(response: httpx2.Response) -> float | None:
    """A 503 "model is loading" answer's estimated_time, else None."""
    if response.status_code != 503:
        return None
    try:
        estimate = response.json().get("estimated_time")
    except (ValueError, AttributeError):
        return None
    return float(estimate) if isinstance(estimate, (int, float)) else None
