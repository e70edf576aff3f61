import base64
import json

import pytest

from clouddetect.detector import Box, Detection
from clouddetect.errors import InvalidBase64, InvalidField
from clouddetect.request_json import image_bytes_of, request_id_of, request_object, response_body
from clouddetect.verdicts import response_problem

GOOD = {"id": "a", "objects": [{"label": "cat", "accuracy": 0.78,
                               "rectangle": {"height": 114, "left": 380, "top": 363, "width": 254}}]}
REQUEST = {"id": "a", "image": base64.b64encode(b"img").decode()}


def test_request_gives_id_and_image_bytes() -> None:
    payload = request_object(REQUEST)
    assert (request_id_of(payload), image_bytes_of(payload)) == ("a", b"img")


def test_object_sent_as_json_text_in_a_string_is_decoded_once_more() -> None:
    assert request_object(json.dumps(REQUEST)) == REQUEST


@pytest.mark.parametrize(
    "payload",
    [[], "x", None, 42, json.dumps(json.dumps(REQUEST)), json.dumps([REQUEST]), "", "[" * 100_000],
    ids=["list", "text", "null", "number", "encoded-twice-over", "string-of-a-list", "empty", "deep"],
)
def test_anything_but_an_object_once_unwrapped_is_invalid_field(payload) -> None:
    with pytest.raises(InvalidField, match="must be a JSON object"):
        request_object(payload)


@pytest.mark.parametrize("payload", [{"image": "YWJj"}, {"id": 3, "image": "YWJj"}, {"id": "", "image": "YWJj"}])
def test_bad_id_is_invalid_field(payload) -> None:
    with pytest.raises(InvalidField, match='"id"'):
        request_id_of(payload)


@pytest.mark.parametrize("image", [None, 5, ["YWJj"]])
def test_non_string_image_is_invalid_field(image) -> None:
    with pytest.raises(InvalidField, match='"image"'):
        image_bytes_of({"id": "req-1", "image": image})


def test_bad_base64_is_invalid_base64() -> None:
    with pytest.raises(InvalidBase64):
        image_bytes_of({"id": "req-2", "image": "%%%"})


def test_response_body_has_the_contract_fields_and_types() -> None:
    body = response_body("a", [Detection("cat", 0.78, Box(left=380, top=363, width=254, height=114))])
    assert body == GOOD
    assert list(body) == ["id", "objects"]
    assert response_problem(body, "a") is None


def test_empty_objects_is_a_list() -> None:
    assert response_body("a", []) == {"id": "a", "objects": []}
