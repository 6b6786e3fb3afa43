"""HFClient: text-to-image on the Hugging Face inference API, over a pool of rotating API keys.

No Flask inside. Keys never leave this module unmasked: not in an exception, a log line or a status.
"""

import base64
import binascii
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable

import requests

import images
from errors import ImageTooLarge, InvalidImage, KeysUnavailable, UpstreamError, UpstreamRejected, UpstreamTimeout

log = logging.getLogger(__name__)

FIRST_BACKOFF = 30.0  # seconds of cooling after a 429 that says nothing of when to return
MAX_BACKOFF = 15 * 60.0
CREDIT_WORDS = re.compile(r"credit|balance|quota|exceeded your monthly|payment", re.IGNORECASE)


def mask(key: str) -> str:
    """A key as it may be shown: its first three and last four characters."""
    return f"{key[:3]}…{key[-4:]}" if len(key) >= 12 else "…"


def read_keys(text: str, separator: str | None = None) -> list[str]:
    """Keys from a comma-separated setting or a file with one a line (blanks and # comments skipped)."""
    lines = text.split(separator) if separator else text.splitlines()
    keys = [line.split("#", 1)[0].strip() for line in lines]
    return list(dict.fromkeys(key for key in keys if key))


@dataclass(frozen=True)
class GeneratedImage:
    """Image bytes as the API sent them, checked to be a PNG or JPEG."""

    data: bytes
    mime_type: str
    extension: str


@dataclass
class Key:
    """One API key and what is known of it."""

    secret: str
    state: str = "active"  # active, cooling, exhausted or disabled
    until: float = 0.0  # when a cooling or exhausted key may be tried again
    reason: str = ""
    rate_limits: int = 0  # 429s in a row, for exponential back-off

    def usable(self, now: float) -> bool:
        return self.state == "active" or (self.state in ("cooling", "exhausted") and now >= self.until)


class KeyPool:
    """Round-robin over the usable keys; thread-safe; the clock is injectable."""

    def __init__(self, secrets: list[str], clock: Callable[[], float] = time.time, exhausted_cooldown: float = 3600.0):
        self.keys = [Key(secret) for secret in secrets]
        self.clock = clock
        self.exhausted_cooldown = exhausted_cooldown
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> Key:
        """The next usable key; KeysUnavailable if there is none."""
        with self._lock:
            now = self.clock()
            for offset in range(len(self.keys)):
                key = self.keys[(self._next + offset) % len(self.keys)]
                if key.usable(now):
                    self._next = (self._next + offset + 1) % len(self.keys)
                    if key.state != "active":
                        key.state, key.reason = "active", ""
                    return key
            raise self._none_usable(now)

    def _none_usable(self, now: float) -> KeysUnavailable:
        if not self.keys:
            return KeysUnavailable(
                "no Hugging Face API key configured: set HF_API_KEYS or HF_API_KEYS_FILE", code="no_api_key")
        returning = [key.until for key in self.keys if key.state in ("cooling", "exhausted")]
        if not returning:
            return KeysUnavailable(
                "every Hugging Face API key is disabled (invalid, expired or not permitted): put a valid key "
                "in HF_API_KEYS or HF_API_KEYS_FILE and restart", code="all_keys_disabled")
        wait = max(1, int(min(returning) - now + 0.999))
        return KeysUnavailable(
            f"every Hugging Face API key is rate-limited or out of credits: try again in {wait} s",
            code="all_keys_busy", headers={"Retry-After": str(wait)})

    def succeeded(self, key: Key) -> None:
        with self._lock:
            key.rate_limits = 0

    def cool(self, key: Key, seconds: float | None) -> None:
        """A 429: rest the key for as long as the API asked, else for an exponential back-off."""
        with self._lock:
            key.rate_limits += 1
            if seconds is None:
                seconds = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (key.rate_limits - 1))
            key.state, key.until, key.reason = "cooling", self.clock() + seconds, "rate limited (429)"
        log.warning("Hugging Face key %s rate limited; resting it %.0f s", mask(key.secret), seconds)

    def exhaust(self, key: Key) -> None:
        """Out of credits: try it again after a long rest, since credits renew."""
        with self._lock:
            key.state, key.until = "exhausted", self.clock() + self.exhausted_cooldown
            key.reason = "out of credits"
        log.warning("Hugging Face key %s is out of credits; resting it %.0f s", mask(key.secret), self.exhausted_cooldown)

    def disable(self, key: Key, reason: str) -> None:
        """Invalid, expired or not permitted: not used again until a restart."""
        with self._lock:
            key.state, key.reason = "disabled", reason
        log.warning("Hugging Face key %s disabled: %s", mask(key.secret), reason)

    def status(self) -> list[dict]:
        """Each key's masked name and state, and when a resting key returns."""
        with self._lock:
            now = self.clock()
            shown = []
            for key in self.keys:
                entry = {"key": mask(key.secret), "state": "active" if key.usable(now) else key.state}
                if entry["state"] != "active":
                    entry["reason"] = key.reason
                if entry["state"] in ("cooling", "exhausted"):
                    entry["retry_in_seconds"] = round(key.until - now, 1)
                shown.append(entry)
            return shown


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
        """The keys' masked states."""
        return self.pool.status()

    def generate(self, description: str, parameters: dict) -> GeneratedImage:
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
                if isinstance(outcome, GeneratedImage):
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

    def _image(self, response: requests.Response) -> GeneratedImage:
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
        return GeneratedImage(data, mime_type, extension)

    def _message(self, response: requests.Response) -> str:
        """The API's own error message, short, with any key masked."""
        if response.status_code == 200:
            return ""
        try:
            error = response.json().get("error", "")
            text = "; ".join(map(str, error)) if isinstance(error, list) else str(error)
        except (ValueError, AttributeError):
            text = response.text
        text = " ".join(text.split())[:300] or response.reason or "no message"
        for key in self.pool.keys:
            text = text.replace(key.secret, mask(key.secret))
        return text

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
