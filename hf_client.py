"""HFClient: text-to-image on the Hugging Face inference API, over a pool of rotating API keys.

No Flask inside. Keys never leave the key pool: an upstream message is redacted before it is used.
"""

import base64
import binascii
import random
import re
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Callable

import requests

import images
from errors import ImageTooLarge, InvalidImage, UpstreamError, UpstreamRejected, UpstreamTimeout
from keys import Key, KeyPool

CREDIT_WORDS = re.compile(r"credit|balance|quota|exceeded your monthly|payment", re.IGNORECASE)


class HFClient:
    """Text-to-image over HTTP: POST {base_url}/{model}, with retries that never blame a key unfairly."""

    def __init__(self, keys: list[str], base_url: str, model: str, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, timeout: float = 120.0, deadline: float = 240.0,
                 max_tries: int = 3, exhausted_cooldown: float = 3600.0):
        self.pool = KeyPool(keys, clock, exhausted_cooldown)
        self.url = f"{base_url.rstrip('/')}/{model}"
        self.model = model
        self.clock, self.sleep = clock, sleep
        self.timeout, self.deadline, self.max_tries = timeout, deadline, max_tries
        self._local = threading.local()

    def status(self) -> list[dict]:
        """The keys' states, each by position and fingerprint."""
        return self.pool.status()

    def generate(self, description: str, parameters: dict) -> images.Encoded:
        """An image for the description; the errors say whose fault a failure was."""
        body = {"inputs": description, "parameters": parameters}
        give_up_at = self.clock() + self.deadline
        failures = 0  # failures that were not a key's fault
        waited_for_loading = False
        while True:
            key = self.pool.take()
            remaining = give_up_at - self.clock()
            if remaining <= 0:
                raise UpstreamTimeout("the Hugging Face inference API did not answer in time: try again later")
            try:
                response = self._session().post(
                    self.url, json=body, timeout=(min(10.0, remaining), min(self.timeout, remaining)),
                    headers={"Authorization": f"Bearer {key.secret}", "Accept": "image/png"})
            except requests.Timeout:
                problem = UpstreamTimeout("the Hugging Face inference API did not answer in time: try again later")
            except requests.RequestException:
                problem = UpstreamError("the connection to the Hugging Face inference API failed: try again later",
                                        code="upstream_unreachable")
            else:
                outcome = self._judge(key, response)
                if isinstance(outcome, images.Encoded):
                    self.pool.succeeded(key)
                    return outcome
                if outcome is None:
                    continue  # the key's own failure: the next key, at once
                problem = outcome
                loading = loading_time(response)
                if loading is not None and not waited_for_loading:
                    waited_for_loading = True
                    self.sleep(max(0.0, min(loading, give_up_at - self.clock() - 1)))
                    continue
            failures += 1
            pause = 2.0 ** failures * random.uniform(0.5, 1.0)
            if failures >= self.max_tries or self.clock() + pause >= give_up_at:
                raise problem
            self.sleep(pause)

    def _judge(self, key: Key, response: requests.Response):
        """The image; None after a key's own failure; the error to retry; or raise one not to retry."""
        status = response.status_code
        message = self._message(response)
        if status == 200:
            return self._image(response)
        if status == 429:
            self.pool.cool(key, retry_after(response, self.clock()))
            return None
        if status == 401:
            self.pool.disable(key, "invalid or expired (401)")
            return None
        if status == 403:
            self.pool.disable(key, "not permitted (403)")
            return None
        if status == 402 or (400 <= status < 500 and CREDIT_WORDS.search(message)):
            self.pool.exhaust(key)
            return None
        if status >= 500:
            return UpstreamError(f"the Hugging Face inference API failed ({status}: {message}): try again later")
        if status in (400, 422):
            raise UpstreamRejected(f"the Hugging Face inference API rejected the request: {message}")
        raise UpstreamError(
            f"the Hugging Face inference API answered {status} ({message}): check SD_MODEL and HF_INFERENCE_URL",
            code="upstream_rejected")

    def _image(self, response: requests.Response) -> images.Encoded:
        data = response.content
        if "json" in response.headers.get("Content-Type", ""):
            try:
                data = base64.b64decode(response.json()["data"][0]["b64_json"], validate=True)
            except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
                raise UpstreamError("the Hugging Face inference API answered without an image: try again later")
        try:
            mime_type, extension = images.identify(data)
        except (InvalidImage, ImageTooLarge):
            raise UpstreamError("the Hugging Face inference API sent something that is not a readable PNG or "
                                "JPEG image: try again later") from None
        return images.Encoded(data, mime_type, extension)

    def _message(self, response: requests.Response) -> str:
        """The API's own error message, short, with every fragment of a key hidden."""
        if response.status_code == 200:
            return ""
        try:
            error = response.json().get("error", "")
            text = "; ".join(map(str, error)) if isinstance(error, list) else str(error)
        except (ValueError, AttributeError):
            text = response.text
        # Keys are hidden in the whole text before it is cut, so that no part of one survives the cut.
        return " ".join(self.pool.redact(text).split())[:300] or response.reason or "no message"

    def _session(self) -> requests.Session:
        # requests.Session is not thread-safe: one a thread, each keeping its connections.
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session


def retry_after(response: requests.Response, now: float) -> float | None:
    """Seconds to wait from Retry-After (seconds or a date) or the RateLimit header's t=; None if neither."""
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
    found = re.search(r"(?:^|[;,\s])t=(\d+)", response.headers.get("RateLimit", ""))
    return float(found.group(1)) if found else None


def loading_time(response: requests.Response) -> float | None:
    """A 503 "model is loading" answer's estimated_time, else None."""
    if response.status_code != 503:
        return None
    try:
        estimate = response.json().get("estimated_time")
    except (ValueError, AttributeError):
        return None
    return float(estimate) if isinstance(estimate, (int, float)) else None
