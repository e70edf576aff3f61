import base64

import numpy as np
import pytest

from clouddetect.codec import decode_base64, decode_image
from clouddetect.errors import InvalidBase64, NotAnImage


def test_plain_base64_decodes() -> None:
    assert decode_base64(base64.b64encode(b"\xff\xd8\xffhello").decode()) == b"\xff\xd8\xffhello"


def test_data_url_prefix_is_accepted() -> None:
    assert decode_base64("data:image/jpeg;base64," + base64.b64encode(b"abc").decode()) == b"abc"


def test_line_breaks_are_accepted() -> None:
    assert decode_base64(base64.encodebytes(b"x" * 200).decode()) == b"x" * 200


@pytest.mark.parametrize("text", ["not base64!", "YW=J", "YWJ", "", "   "])
def test_invalid_base64_is_rejected(text: str) -> None:
    with pytest.raises(InvalidBase64):
        decode_base64(text)


def test_urlsafe_alphabet_is_rejected() -> None:
    with pytest.raises(InvalidBase64):
        decode_base64(base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode())


def test_real_jpeg_decodes_to_bgr(images) -> None:
    image = decode_image(images[0].read_bytes())
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_jpeg_is_not_an_image(images, fraction: float) -> None:
    data = images[1].read_bytes()
    with pytest.raises(NotAnImage):
        decode_image(data[: int(len(data) * fraction)])


def test_text_is_not_an_image() -> None:
    with pytest.raises(NotAnImage):
        decode_image(b"this is plain text, not a picture")
