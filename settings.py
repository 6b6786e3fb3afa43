"""The settings: defaults, read from the environment by the names in the README."""

import ipaddress
import os

from errors import SettingError

DEFAULTS = {
    "CAPTION_MODEL": "Salesforce/blip-image-captioning-base",
    "VQA_MODEL": "Salesforce/blip-vqa-base",
    "DEVICE": "auto",
    "CAPTION_NUM_BEAMS": 3,
    "CAPTION_MIN_LENGTH": 10,
    "CAPTION_MAX_LENGTH": 30,
    "VQA_NUM_BEAMS": 3,
    "VQA_MIN_LENGTH": 1,
    "VQA_MAX_LENGTH": 10,
    "FAST_MODE": False,
    "FEW_ROW_LINEAR": "auto",
    "CACHE_MAX_MB": 256,
    "MAX_BATCH": 8,
    "BATCH_WAIT_MS": 5,
    "MAX_QUEUE": 32,
    "MAX_BACKGROUND": 16,
    "MAX_DECODES": 2,
    "MODEL_TIMEOUT": 120,
    "DEMO": False,
    "HF_API_KEYS": "",
    "HF_API_KEYS_FILE": "",
    "HF_PROVIDER": "auto",
    "HF_ROUTER_URL": "https://router.huggingface.co",
    "SD_MODEL": "black-forest-labs/FLUX.1-schnell",
    "HF_TIMEOUT": 120,
    "HF_DEADLINE": 240,
    "HF_MAX_TRIES": 3,
    "HF_EXHAUSTED_COOLDOWN": 3600,
    "UPLOAD_FOLDER": "uploads",
    "GENERATED_FOLDER": "uploads/generated",
    "HISTORY_FILE": "history.json",
    "DATABASE_URL": "",
    "MAX_IMAGE_BYTES": 16 * 1024 * 1024,
    "MAX_IMAGE_PIXELS": 40_000_000,
    "SECRET_KEY": "",
    "TRUSTED_HOSTS": "",
    "WEB_CONCURRENCY": 1,
    "HOST": "127.0.0.1",
    "PORT": 5000,
    "AUTH": "auto",
    "GENERATIONS_PER_DAY": 50,
    "RATE_LIMIT": "120/minute",
    "RATE_LIMIT_STORAGE": "memory://",
    "SESSION_COOKIE_SECURE": False,
    "TRUSTED_PROXIES": 0,
    "JOBS_FOLDER": "",  # empty: UPLOAD_FOLDER/jobs
    "JOB_MAX_FILES": 10_000,
    "JOB_MAX_MB": 2048,
    "JOBS_PER_ACCOUNT": 2,
    "JOB_CLAIM_SECONDS": 60,
    "JOB_WORKER": True,
}

# Settings that are gone, and what to set instead.
RETIRED = {
    "HF_INFERENCE_URL": "generation goes through inference providers now; unset it, and set HF_PROVIDER "
                        "(default auto) and, for a proxy, HF_ROUTER_URL",
}

# The most a request's header fields may weigh, as the app receives them: each "Name: value\r\n" counted in bytes
# (a field sent several times counts once, its values joined by commas, as WSGI joins them; behind serve.py's
# nginx, with the X-Forwarded-For it adds). Neither the request line nor the blank line ending the head counts;
# the request target (path and query) has the same limit of its own. On localhost a browser sends the cookies of
# every local app: ~10 KB of Cookie is common. serve.py sizes nginx and gunicorn to pass on everything up to it.
MAX_HEADER_BYTES = 32 * 1024

DEMO_NOTICE = "demo models with random weights: captions and answers are meaningless"

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def from_environment(environ) -> dict:
    """The settings the environment sets, converted to their defaults' types."""
    for name, instead in RETIRED.items():
        if name in environ:
            raise SettingError(f"{name} is no longer read: {instead}")
    found = {}
    for name, default in DEFAULTS.items():
        if name not in environ:
            continue
        raw = environ[name].strip()
        if isinstance(default, bool):
            if raw.lower() not in TRUE | FALSE:
                raise SettingError(f"{name}={raw!r}: use 1 or 0")
            found[name] = raw.lower() in TRUE
        elif isinstance(default, int):
            try:
                found[name] = int(raw)
            except ValueError:
                raise SettingError(f"{name}={raw!r}: use a whole number") from None
        else:
            found[name] = raw
    if found.get("FEW_ROW_LINEAR", "auto") not in ("auto", "on", "off"):
        raise SettingError(f"FEW_ROW_LINEAR={found['FEW_ROW_LINEAR']!r}: use auto (measure at load), on or off")
    if "AUTH" in found:
        found["AUTH"] = found["AUTH"].lower()
        if found["AUTH"] not in ("auto", "on", "off"):
            raise SettingError(f"AUTH={environ['AUTH'].strip()!r}: use auto (on unless HOST is a loopback "
                               "address), on or off")
    if "RATE_LIMIT" in found:
        from limits import parse_many

        try:
            parse_many(found["RATE_LIMIT"])
        except ValueError:
            raise SettingError(f"RATE_LIMIT={found['RATE_LIMIT']!r}: use a rate such as 120/minute or "
                               "10/second;500/hour") from None
    if found.get("TRUSTED_PROXIES", 0) < 0:
        raise SettingError(f"TRUSTED_PROXIES={found['TRUSTED_PROXIES']}: use the number of proxies in front, 0 or more")
    for name in ("JOB_MAX_FILES", "JOB_MAX_MB", "JOB_CLAIM_SECONDS"):
        if found.get(name, 1) < 1:
            raise SettingError(f"{name}={found[name]}: use a whole number of 1 or more")
    if found.get("JOBS_PER_ACCOUNT", 0) < 0:
        raise SettingError(f"JOBS_PER_ACCOUNT={found['JOBS_PER_ACCOUNT']}: use 0 (no limit) or more")
    if found.get("GENERATIONS_PER_DAY", 0) < 0:
        raise SettingError(f"GENERATIONS_PER_DAY={found['GENERATIONS_PER_DAY']}: use 0 (no limit) or more")
    return found


LOOPBACK_HOSTS = {"localhost", "::1"}


def is_loopback(host: str) -> bool:
    """Whether HOST listens only on this machine: 127.0.0.0/8, ::1 or localhost."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_on(config) -> bool:
    """Whether requests need an account: AUTH on, or auto with HOST not a loopback address."""
    return config["AUTH"] == "on" or (config["AUTH"] == "auto" and not is_loopback(config["HOST"]))


def model_source(value: str, root: str) -> tuple[str, bool]:
    """A model setting as (where to load from, whether that is a local folder).

    A folder that exists (relative paths are taken from root), or a value written as a path
    (absolute, ./, ../ or ~), is local; anything else is a hub id such as Salesforce/blip-vqa-base.
    """
    expanded = os.path.expanduser(value)
    path = os.path.join(root, expanded)
    written_as_path = os.path.isabs(expanded) or value.startswith(("./", "../", "~"))
    if os.path.isdir(path) or written_as_path:
        return os.path.normpath(path), True
    return value, False
