"""Locust users that send the test images to ``POST /api/object_detection`` and judge every answer.

Run it as any locustfile: ``locust -f src/clouddetect/loadtest/locustfile.py --host http://127.0.0.1:5000``
(web UI), add ``--headless -u 50 -r 5 -t 2m`` for a headless run, or ``--processes 4`` (or ``--master`` and
``--worker`` on several machines) when one load generator is not enough. The images are read and base64-encoded
once when Locust starts, so a request costs the client only its id and a concatenation.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from clouddetect.images import IMAGES_ENV, encode_file, image_files
from clouddetect.loadtest import tally
from clouddetect.loadtest.settings import LoadSettings, locust_flag
from clouddetect.settings_fields import add_arguments
from clouddetect.verdicts import ENDPOINT, TIMEOUT_HEADER, failure_kind

JSON_HEADERS = {"Content-Type": "application/json"}

# The JSON text of each image's "image" member, built once at start-up.
_encoded_images: list[bytes] = []


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    add_arguments(parser, LoadSettings, locust_flag, ["timeout_s", "image_order", "wait_s"])
    # The images may also come from the environment, as everywhere in the project.
    add_arguments(parser, LoadSettings, locust_flag, ["images"], env_var=IMAGES_ENV)


@events.init.add_listener
def _prepare(environment: Environment, **_kwargs: object) -> None:
    options = environment.parsed_options
    files = image_files(Path(options.images))
    _encoded_images[:] = [json.dumps(encode_file(path)).encode("ascii") for path in files]
    DetectionUser.network_timeout = DetectionUser.connection_timeout = options.request_timeout_s


@events.report_to_master.add_listener
def _report_tally(data: dict, **_kwargs: object) -> None:
    data[tally.REPORT_KEY] = tally.LOCAL.as_report()


@events.worker_report.add_listener
def _receive_tally(client_id: str, data: dict, **_kwargs: object) -> None:
    if tally.REPORT_KEY in data:
        tally.WORKERS[client_id] = tally.Tally(**data[tally.REPORT_KEY])


def request_body(request_id: str, encoded_image: bytes) -> bytes:
    return b'{"id": ' + json.dumps(request_id).encode("ascii") + b', "image": ' + encoded_image + b"}"


class DetectionUser(FastHttpUser):
    """One client sending images back to back (no think time unless ``--wait-s``).

    Each user starts at a random image, so that the whole folder is sent even when users send few requests each.
    Every request is counted when sent and again once judged (see ``tally.py``).
    """

    def wait_time(self) -> float:
        return self.environment.parsed_options.wait_s

    def on_start(self) -> None:
        self.next_image = random.randrange(len(_encoded_images))

    def pick_image(self) -> bytes:
        if self.environment.parsed_options.image_order == "random":
            return random.choice(_encoded_images)
        image = _encoded_images[self.next_image]
        self.next_image = (self.next_image + 1) % len(_encoded_images)
        return image

    @task
    def detect(self) -> None:
        request_id = str(uuid.uuid4())
        timeout_s = self.environment.parsed_options.request_timeout_s
        sent_at = tally.LOCAL.send()
        headers = {**JSON_HEADERS, TIMEOUT_HEADER: f"{timeout_s:g}"}  # the service gives up when this client does
        try:
            with self.client.post(ENDPOINT, data=request_body(request_id, self.pick_image()), headers=headers,
                                  catch_response=True) as response:
                elapsed_s = response.request_meta["response_time"] / 1000
                # Status 0: no answer at all, and the error says why; other statuses carry a body to judge.
                error = getattr(response, "error", None) if response.status_code == 0 else None
                text = None if error else response.text
                kind = failure_kind(response.status_code, text, request_id, elapsed_s, timeout_s, error)
                if kind is None:
                    response.success()
                else:
                    response.failure(kind)
        except Exception:  # Locust logs it and goes on; judged failed, it is not left in flight (a stopped user is)
            tally.LOCAL.judge(sent_at, failed=True)
            raise
        tally.LOCAL.judge(sent_at, failed=kind is not None)
