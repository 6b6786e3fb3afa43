"""The pool of Hugging Face API keys: rotation, each key's state, and keeping the keys secret.

A key is shown only as its position and a fingerprint (the first 8 hex digits of its SHA-256),
never as characters of the key; any text that may have come near a key goes through redact().
No Flask inside.
"""

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from errors import AppError, KeysUnavailable

log = logging.getLogger(__name__)

FIRST_BACKOFF = 30.0  # seconds of cooling after a 429 that says nothing of when to return
MAX_BACKOFF = 15 * 60.0
FRAGMENT = 8  # this many characters of a key in a row are hidden wherever they appear
HIDDEN = "[hidden]"


def digest(secret: str) -> str:
    """A key's SHA-256 in hex: how the database that replicas share knows it."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint(secret: str) -> str:
    """A short non-reversible name of a key: the first 8 hex digits of its SHA-256."""
    return digest(secret)[:8]


def read_keys(text: str, separator: str | None = None) -> list[str]:
    """Keys from a comma-separated setting or a file with one a line (blanks and # comments skipped)."""
    lines = text.split(separator) if separator else text.splitlines()
    keys = [line.split("#", 1)[0].strip() for line in lines]
    return list(dict.fromkeys(key for key in keys if key))


class Redactor:
    """Hides, in any text, every run of FRAGMENT or more characters of a secret (a shorter secret whole)."""

    def __init__(self, secrets: list[str]):
        pieces = {secret[i : i + FRAGMENT] for secret in secrets for i in range(len(secret) - FRAGMENT + 1)}
        pieces |= {secret for secret in secrets if 0 < len(secret) < FRAGMENT}
        # A lookahead finds every piece, overlapping ones too, so no tail of a longer run is missed.
        alternatives = "|".join(map(re.escape, sorted(pieces, key=len, reverse=True)))
        self._pattern = re.compile(f"(?=({alternatives}))") if pieces else None

    def __call__(self, text: str) -> str:
        """The text with the secrets' fragments replaced by [hidden]."""
        if self._pattern is None:
            return text
        spans: list[list[int]] = []
        for found in self._pattern.finditer(text):
            start, end = found.start(), found.start() + len(found.group(1))
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        if not spans:
            return text
        parts, position = [], 0
        for start, end in spans:
            parts += [text[position:start], HIDDEN]
            position = end
        parts.append(text[position:])
        return "".join(parts)


@dataclass
class Key:
    """One API key and what is known of it."""

    secret: str
    position: int  # 1-based, as the keys were configured
    state: str = "active"  # active, cooling, exhausted or disabled
    until: float = 0.0  # when a cooling or exhausted key may be tried again
    reason: str = ""
    rate_limits: int = 0  # 429s in a row, for exponential back-off

    def __post_init__(self):
        self.digest = digest(self.secret)
        self.fingerprint = self.digest[:8]

    @property
    def name(self) -> str:
        """How the key appears in the log: its position and fingerprint."""
        return f"#{self.position} ({self.fingerprint})"

    def usable(self, now: float) -> bool:
        return self.state == "active" or (self.state in ("cooling", "exhausted") and now >= self.until)


class SharedStates(Protocol):
    """Where replicas keep the keys' states (history_sql.SharedKeyStates), by each key's digest."""

    def read(self, key_hashes: list[str]) -> dict[str, dict]: ...

    def write(self, key_hash: str, state: dict) -> None: ...

    def forget_disabled(self, key_hashes: list[str]) -> None: ...


SHARED_FIELDS = ("state", "until", "reason", "rate_limits")


class KeyPool:
    """Round-robin over the usable keys; thread-safe; the clock is injectable.

    With shared states (a database several replicas use), a key's state is read before each choice
    and written at each change, so a key one replica rests is rested by all; without, it lives here.
    """

    def __init__(self, secrets: list[str], clock: Callable[[], float] = time.time, exhausted_cooldown: float = 3600.0,
                 shared: SharedStates | None = None):
        self.keys = [Key(secret, position) for position, secret in enumerate(secrets, 1)]
        self.redact = Redactor(secrets)
        self.clock = clock
        self.exhausted_cooldown = exhausted_cooldown
        self.shared = shared
        self._next = 0
        self._lock = threading.Lock()
        if shared is not None and self.keys:
            self._share(lambda: shared.forget_disabled([key.digest for key in self.keys]))

    def take(self) -> Key:
        """The next usable key; KeysUnavailable if there is none."""
        with self._lock:
            self._pull()
            now = self.clock()
            for offset in range(len(self.keys)):
                key = self.keys[(self._next + offset) % len(self.keys)]
                if key.usable(now):
                    self._next = (self._next + offset + 1) % len(self.keys)
                    if key.state != "active":
                        key.state, key.reason = "active", ""
                    return key
            raise self._none_usable(now)

    def check(self) -> None:
        """KeysUnavailable now if no key could be taken (none configured, or every one resting); takes none."""
        with self._lock:
            self._pull()
            now = self.clock()
            if not any(key.usable(now) for key in self.keys):
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
            if key.rate_limits:
                key.rate_limits = 0
                self._push(key)

    def cool(self, key: Key, seconds: float | None) -> None:
        """A 429: rest the key for as long as the API asked, else for an exponential back-off."""
        with self._lock:
            key.rate_limits += 1
            if seconds is None:
                seconds = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (key.rate_limits - 1))
            key.state, key.until, key.reason = "cooling", self.clock() + seconds, "rate limited (429)"
            self._push(key)
        log.warning("Hugging Face key %s rate limited; resting it %.0f s", key.name, seconds)

    def exhaust(self, key: Key) -> None:
        """Out of credits: try it again after a long rest, since credits renew."""
        with self._lock:
            key.state, key.until = "exhausted", self.clock() + self.exhausted_cooldown
            key.reason = "out of credits"
            self._push(key)
        log.warning("Hugging Face key %s is out of credits; resting it %.0f s", key.name, self.exhausted_cooldown)

    def disable(self, key: Key, reason: str) -> None:
        """Invalid, expired or not permitted: not used again until a restart."""
        with self._lock:
            key.state, key.reason = "disabled", reason
            self._push(key)
        log.warning("Hugging Face key %s disabled: %s", key.name, reason)

    def status(self) -> list[dict]:
        """Each key's position, fingerprint and state, and when a resting key returns."""
        with self._lock:
            self._pull()
            now = self.clock()
            shown = []
            for key in self.keys:
                entry = {"position": key.position, "fingerprint": key.fingerprint,
                         "state": "active" if key.usable(now) else key.state}
                if entry["state"] != "active":
                    entry["reason"] = key.reason
                if entry["state"] in ("cooling", "exhausted"):
                    entry["retry_in_seconds"] = round(key.until - now, 1)
                shown.append(entry)
            return shown

    def _pull(self) -> None:
        """Take the states other replicas wrote (under the lock)."""
        if self.shared is None or not self.keys:
            return
        states = self._share(lambda: self.shared.read([key.digest for key in self.keys])) or {}
        for key in self.keys:
            if key.digest in states:
                for name in SHARED_FIELDS:
                    setattr(key, name, states[key.digest][name])

    def _push(self, key: Key) -> None:
        """Tell the other replicas of a key's new state (under the lock)."""
        if self.shared is not None:
            self._share(lambda: self.shared.write(key.digest, {name: getattr(key, name) for name in SHARED_FIELDS}))

    def _share(self, call: Callable):
        # The shared states only spare other replicas a failed call: when the database does not
        # answer, this replica goes on with what it knows.
        try:
            return call()
        except AppError as error:
            log.warning("the API keys' shared states could not be read or written (%s): using this replica's own",
                        error.code)
            return None
