"""The mistakes a client can make, each with the HTTP status it is answered with.

The API maps every ``ClientError`` to a JSON body in one handler; nothing else decides status codes.
"""

from __future__ import annotations

# The server refuses some requests before their body has arrived and puts its ClientError into the WSGI environ
# under this key; the app answers it like any other, so it is shaped, logged and counted in one place.
REFUSAL_ENVIRON_KEY = "clouddetect.refusal"


class ClientError(Exception):
    """A request the service cannot serve; ``message`` says what was wrong and what is accepted."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotJson(ClientError):
    status = 415
    code = "unsupported_media_type"


class BodyTooLarge(ClientError):
    status = 413
    code = "body_too_large"


class ImageTooLarge(ClientError):
    status = 413
    code = "image_too_large"


class LengthRequired(ClientError):
    status = 411
    code = "length_required"


class MalformedJson(ClientError):
    code = "malformed_json"


class InvalidField(ClientError):
    code = "invalid_field"


class InvalidBase64(ClientError):
    code = "invalid_base64"


class NotAnImage(ClientError):
    code = "not_an_image"


class Overloaded(ClientError):
    """Too many requests already wait for inference; the client should retry later."""

    status = 503
    code = "overloaded"


class DeadlineExceeded(ClientError):
    """The request's deadline (its ``X-Request-Timeout``, else ``max_queue_wait_s``) passed before its turn came."""

    status = 503
    code = "deadline_exceeded"


class ClientGone(ClientError):
    """The client closed its connection while its request waited: the request is dropped, the answer goes nowhere."""

    status = 499  # nginx's "client closed request": never sent, but logged and counted as such
    code = "client_closed_request"


class RequestTimeout(ClientError):
    """The request arrived too slowly; the server stopped waiting for the rest of it."""

    status = 408
    code = "request_timeout"


class NotReady(ClientError):
    """The model is still loading or warming up."""

    status = 503
    code = "not_ready"
