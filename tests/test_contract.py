import base64

import pytest

from clouddetect.contract import parse_request, response_body, response_problem
from clouddetect.detector import Box, Detection
from clouddetect.errors import InvalidBase64, InvalidField

GOOD = {"id": "a", "objects": [{"label": "cat", "accuracy": 0.78,
                               "rectangle": {"height": 114, "left": 380, "top": 363, "width": 254}}]}


def test_request_gives_id_and_image_bytes() -> None:
    assert parse_request({"id": "a", "image": base64.b64encode(b"img").decode()}) == ("a", b"img")


@pytest.mark.parametrize(
    "payload", [[], "x", None, {"image": "YWJj"}, {"id": 3, "image": "YWJj"}, {"id": "", "image": "YWJj"}]
)
def test_bad_id_or_body_is_invalid_field(payload) -> None:
    with pytest.raises(InvalidField):
        parse_request(payload)


@pytest.mark.parametrize("image", [None, 5, ["YWJj"]])
def test_non_string_image_is_invalid_field_carrying_the_id(image) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_request({"id": "req-1", "image": image})
    assert caught.value.request_id == "req-1"


def test_bad_base64_carries_the_id() -> None:
    with pytest.raises(InvalidBase64) as caught:
        parse_request({"id": "req-2", "image": "%%%"})
    assert caught.value.request_id == "req-2"


def test_response_body_has_the_contract_fields_and_types() -> None:
    body = response_body("a", [Detection("cat", 0.78, Box(left=380, top=363, width=254, height=114))])
    assert body == GOOD
    assert list(body) == ["id", "objects"]


def test_empty_objects_is_a_list() -> None:
    assert response_body("a", []) == {"id": "a", "objects": []}


def test_good_answer_has_no_problem() -> None:
    assert response_problem(GOOD, "a") is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"id": "b", "objects": []},
        {"id": "a"},
        {"id": "a", "objects": None},
        {"id": "a", "objects": [{"label": "cat", "accuracy": "0.7", "rectangle": GOOD["objects"][0]["rectangle"]}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 1.5, "rectangle": GOOD["objects"][0]["rectangle"]}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 0.5, "rectangle": {"height": 1, "left": 1, "top": 1}}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 0.5,
                                 "rectangle": {"height": 1.5, "left": 1, "top": 1, "width": 2}}]},
    ],
)
def test_broken_answers_are_named(body) -> None:
    assert response_problem(body, "a")
