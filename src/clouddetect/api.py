"""The Flask app: routes, request validation and the error handlers. Knows nothing of OpenCV internals.

A detection request passes admission (bounded waiting, so overload is answered at once), is parsed, decoded and
resized under a small semaphore (bounded memory for large photos), then waits for the network's forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass

import swagger_ui_bundle
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException, NotFound

from clouddetect import machine
from clouddetect.admission import DEADLINE_ENVIRON_KEY, GONE_ENVIRON_KEY, Admission
from clouddetect.codec import decode_image
from clouddetect.config import Settings
from clouddetect.detector import Detection, Detector, PreparedImage
from clouddetect.errors import (
    REFUSAL_ENVIRON_KEY,
    BodyTooLarge,
    ClientError,
    ClientGone,
    DeadlineExceeded,
    LengthRequired,
    MalformedJson,
    NotJson,
    NotReady,
)
from clouddetect.metrics import Metrics
from clouddetect.openapi import document
from clouddetect.request_json import image_bytes_of, request_id_of, request_object, response_body
from clouddetect.verdicts import ENDPOINT, TIMEOUT_HEADER

log = logging.getLogger("clouddetect.api")
# Of the files swagger-ui-bundle ships, the two /docs needs.
SWAGGER_UI_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})
bp = Blueprint("api", __name__)


@dataclass
class DetectionPipeline:
    """Admission, parsing, decoding and inference of one app's detection requests, and what the routes share.

    The request's id is kept in ``flask.g`` as soon as it is read: the answer, the error handlers and the log line
    all take it from there.
    """

    settings: Settings
    detector: Detector
    metrics: Metrics
    admission: Admission
    decode_slots: threading.BoundedSemaphore

    def detect(self, body_bytes: int) -> list[Detection]:
        if not self.detector.ready:
            raise NotReady("the model is still loading; retry shortly")
        allowed_s = self.admission.wait_allowed_s(request.headers.get(TIMEOUT_HEADER))
        # The server's bridge set the deadline as the request arrived, and admitted it by time before its body was
        # read; a request from elsewhere (a test client) starts its clock and is admitted here.
        deadline = request.environ.get(DEADLINE_ENVIRON_KEY)
        if deadline is None:
            deadline = time.monotonic() + allowed_s
            refusal = self.admission.refusal_by_time(allowed_s)
            if refusal is not None:
                raise refusal
        gone = request.environ.get(GONE_ENVIRON_KEY)
        with self.admission.slot(body_bytes):
            self._still_wanted(deadline, allowed_s, gone)  # not even decoded for nobody
            prepared = self._read_image()
            detections, held_s = self.detector.infer(prepared, lambda: self._still_wanted(deadline, allowed_s, gone))
        g.inference_ms = held_s * 1000
        self.metrics.inference.observe(held_s)
        for d in detections:
            self.metrics.objects.labels(d.label).inc()
        return detections

    def _still_wanted(self, deadline: float, allowed_s: float, gone: threading.Event | None) -> None:
        """Raises, so the request is dropped unrun, when its client left, or when its deadline passed while it
        waited or would pass before its answer is made (one service time from now)."""
        finish = time.monotonic() + (self.detector.service_s or 0.0)
        for dropped, reason in ((gone is not None and gone.is_set(), ClientGone),
                                (finish > deadline, DeadlineExceeded)):
            if dropped:
                self.metrics.dropped.labels(reason.code).inc()
                raise reason(f"not run: {'the client left' if reason is ClientGone else 'its deadline passed'} "
                             f"before its turn (it allowed {allowed_s:g} s); retry shortly")

    def _read_image(self) -> PreparedImage:
        """The request's image at network size; the body, its bytes and the full image are let go on return, so a
        request waiting for the network holds only the 0.5 MB it needs."""
        payload = request_object(_json_body())
        g.request_id = request_id_of(payload)
        data = image_bytes_of(payload)
        del payload  # its base64 text is not kept while the request waits for a decode slot
        with self.decode_slots:
            return self.detector.prepare(decode_image(data, self.settings.max_image_pixels))


def create_app(settings: Settings, detector: Detector, metrics: Metrics | None = None) -> Flask:
    # The try-it page's files ship in the package and are served read-only (GET and HEAD) under /web/.
    app = Flask(__name__, static_folder="web", static_url_path="/web")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # answers keep the contract's field order: id first
    app.extensions["clouddetect"] = DetectionPipeline(
        settings=settings,
        detector=detector,
        metrics=metrics or Metrics(),
        admission=Admission(settings.max_waiting_requests, settings.max_waiting_body_bytes, settings.max_queue_wait_s,
                            lambda: detector.service_s),
        decode_slots=threading.BoundedSemaphore(settings.decode_slots),
    )
    app.register_blueprint(bp)
    app.register_error_handler(ClientError, _client_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _server_error)
    return app


def _pipeline() -> DetectionPipeline:
    return current_app.extensions["clouddetect"]


def _json_body() -> object:
    if not request.is_json:
        raise NotJson('send the body as JSON with "Content-Type: application/json"')
    if request.content_length is None:
        raise LengthRequired("send the body with a Content-Length header (chunked bodies are not accepted)")
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedJson("the body is not valid JSON: nested too deeply") from None


@bp.post(ENDPOINT)
def object_detection() -> Response:
    pipeline = _pipeline()
    limit = pipeline.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the body has {request.content_length} bytes; at most {limit} are accepted")
    body_bytes = request.content_length or limit
    detections = pipeline.detect(body_bytes)
    g.objects = len(detections)
    return jsonify(response_body(g.request_id, detections))


@bp.before_app_request
def _start_clock() -> None:
    g.started = time.perf_counter()
    if request.path == ENDPOINT:
        _pipeline().metrics.in_flight.inc()


@bp.before_app_request
def _answer_refusal() -> None:
    """A request the server refused before its body arrived (too slow, too many bodies arriving) is answered here."""
    refusal = request.environ.get(REFUSAL_ENVIRON_KEY)
    if refusal is not None:
        raise refusal


@bp.teardown_app_request
def _stop_clock(_exc: BaseException | None) -> None:
    if request.path == ENDPOINT:
        _pipeline().metrics.in_flight.dec()


@bp.after_app_request
def _account(response: Response) -> Response:
    if request.path != ENDPOINT or request.method == "OPTIONS":
        return response
    pipeline = _pipeline()
    total_s = time.perf_counter() - g.started
    pipeline.metrics.requests.labels(str(response.status_code)).inc()
    pipeline.metrics.latency.observe(total_s)
    log.info(
        "request id=%s status=%d objects=%d inference_ms=%.1f total_ms=%.1f instance=%s error=%s",
        _log_safe(g.get("request_id") or "-"), response.status_code, g.get("objects", 0), g.get("inference_ms", 0.0),
        total_s * 1000, pipeline.settings.instance_name, g.get("error", "-"),
    )
    return response


def _log_safe(text: str) -> str:
    """A client's id in one log line: control characters escaped, so no id can forge another line."""
    return text.encode("unicode_escape").decode("ascii")


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="alive", instance=_pipeline().settings.instance_name)


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    pipeline = _pipeline()
    ready = pipeline.detector.ready
    body = jsonify(status="ready" if ready else "warming up", instance=pipeline.settings.instance_name,
                   **dataclasses.asdict(pipeline.detector.engine), cpu=machine.cpu())
    return body, 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    payload, content_type = _pipeline().metrics.render()
    return Response(payload, content_type=content_type)


# The page may load only its own files and talk only to this service: nothing is fetched from elsewhere.
PAGE_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The same for /docs, but Swagger UI's style sheet draws its icons as data: SVG images, which reach no host.
DOCS_CONTENT_SECURITY_POLICY = PAGE_CONTENT_SECURITY_POLICY.replace(
    "img-src 'self' blob:", "img-src 'self' blob: data:"
)


@bp.get("/")
def page() -> Response:
    """A page to try the detector: it calls the API like any other client, so it adds no way in of its own."""
    return _page("index.html", PAGE_CONTENT_SECURITY_POLICY)


@bp.get("/docs")
def docs() -> Response:
    """The OpenAPI document rendered by Swagger UI, from the files its PyPI package ships."""
    return _page("docs.html", DOCS_CONTENT_SECURITY_POLICY)


@bp.get("/docs/<name>")
def docs_file(name: str) -> Response:
    if name not in SWAGGER_UI_FILES:
        raise NotFound()
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, name)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())


def _page(name: str, policy: str) -> Response:
    response = current_app.send_static_file(name)
    response.headers["Content-Security-Policy"] = policy
    return response


def _error_response(status: int, code: str, message: str, request_id: str | None = None) -> Response:
    body: dict[str, object] = {"error": {"code": code, "message": message}}
    if request_id is not None:
        body["id"] = request_id
    response = jsonify(body)
    response.status_code = status
    return response


def _client_error(exc: ClientError) -> Response:
    g.error = exc.code
    response = _error_response(exc.status, exc.code, exc.message, g.get("request_id"))
    if exc.status == 503:
        response.headers["Retry-After"] = str(_pipeline().settings.retry_after_s)
    return response


def _http_error(exc: HTTPException) -> Response:
    code = g.error = (exc.name or "error").lower().replace(" ", "_")
    response = _error_response(exc.code or 500, code, exc.description or exc.name or "error")
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _server_error(exc: Exception) -> Response:
    g.error = "internal_error"
    log.exception("unexpected error serving %s %s", request.method, request.path)
    return _error_response(
        500, "internal_error", "the server failed to answer; the fault is logged", g.get("request_id")
    )
