"""Domain errors shared by the rooms; app.py maps each to its JSON response once."""


class SettingError(ValueError):
    """A setting names something the app cannot use: the start stops, saying so in one line with the fix."""

    # The start's exit status: gunicorn's "App failed to load" (its Arbiter.APP_LOAD_ERROR), so that its master
    # stops instead of starting the worker again and again; every other way of starting exits the same.
    exit_status = 4


class AppError(Exception):
    """An error the user can act on: an HTTP status, a stable code and a message."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}


class InvalidInput(AppError):
    """A missing or invalid request field."""

    status = 400
    code = "invalid_input"


class InvalidImage(AppError):
    """The upload is not a PNG or JPEG we can use."""

    status = 400
    code = "invalid_image"


class ImageTooLarge(AppError):
    """The upload is over the byte or pixel limit."""

    status = 413
    code = "file_too_large"


class NotFound(AppError):
    """An unknown image or generation id."""

    status = 404
    code = "not_found"


class Unauthorized(AppError):
    """A request that needs an account came without a valid sign-in or API key."""

    status = 401
    code = "unauthorized"


class RateLimited(AppError):
    """Too many requests, or failed sign-ins, in a window."""

    status = 429
    code = "rate_limited"


class QuotaExceeded(AppError):
    """An account has made GENERATIONS_PER_DAY generations in the last 24 hours."""

    status = 429
    code = "quota_exceeded"


class AccountExists(AppError):
    """An account name that is taken already."""

    status = 409
    code = "account_exists"


class NotOwner(AppError):
    """A change to something another session made."""

    status = 403
    code = "not_owner"


class ModelUnavailable(AppError):
    """A model could not be loaded; the endpoints that need it answer 503."""

    status = 503
    code = "model_unavailable"


class UpstreamError(AppError):
    """The inference API answered with something unusable, or not at all."""

    status = 502
    code = "upstream_error"


class ModelNotServed(AppError):
    """No inference provider serves SD_MODEL for text-to-image (or not the one HF_PROVIDER names)."""

    status = 503
    code = "model_not_served"


class UpstreamRejected(AppError):
    """The inference API refused the request itself (a bad parameter, say)."""

    status = 400
    code = "generation_rejected"


class UpstreamTimeout(AppError):
    """The inference API did not answer in time."""

    status = 504
    code = "upstream_timeout"


class KeysUnavailable(AppError):
    """No API key configured, or every key is cooling down, disabled or out of credits."""

    status = 503
    code = "no_usable_api_key"


class InsufficientStorage(AppError):
    """The disk is full: nothing was stored."""

    status = 507
    code = "insufficient_storage"


class StorageReadOnly(AppError):
    """A data folder cannot be written: reads still work."""

    status = 503
    code = "storage_read_only"


class StorageUnreadable(AppError):
    """A data file the app needs cannot be read (its permissions changed under the running app)."""

    status = 503
    code = "storage_unreadable"


class DatabaseUnavailable(AppError):
    """The history's database did not answer: nothing was stored."""

    status = 503
    code = "database_unavailable"


class ModelBusy(AppError):
    """The model's queue is full: come back shortly."""

    status = 503
    code = "model_busy"


class ModelTimeout(AppError):
    """The request waited too long for the model."""

    status = 504
    code = "model_timeout"
