"""From the wire's base64 text to a BGR image, rejecting anything that is not a whole, decodable image."""

from __future__ import annotations

import base64
import binascii
import io
import re

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from clouddetect.config import Settings
from clouddetect.errors import ImageTooLarge, InvalidBase64, NotAnImage

# The pixel limit is ours (max_image_pixels), checked from the header before anything is decoded.
Image.MAX_IMAGE_PIXELS = None

# Browsers' FileReader.readAsDataURL() gives "data:image/png;base64,..."; clients may send it unchanged.
_DATA_URL_PREFIX = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)
_WHITESPACE = re.compile(r"\s+")
_NOT_AN_IMAGE = '"image" does not decode as an image: send a whole JPEG, PNG, BMP, WebP, TIFF or GIF file'


def decode_base64(text: str) -> bytes:
    """Standard base64 (padding required, line breaks allowed), with or without a data-URL prefix.

    The regular expressions run only on text that needs them: over a 200 KB image they cost ~1% of a request.
    """
    if text.startswith("data:"):
        text = _DATA_URL_PREFIX.sub("", text, count=1)
    try:
        data = _strict_b64decode(text)
    except InvalidBase64:  # line breaks (MIME base64) or plain garbage: decide without the white space
        data = _strict_b64decode(_WHITESPACE.sub("", text))
    if not data:
        raise InvalidBase64('"image" is empty')
    return data


def _strict_b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64('"image" is not valid standard base64 (A-Z, a-z, 0-9, +, / and = padding)') from None


def decode_image(data: bytes, max_pixels: int = Settings.max_image_pixels) -> np.ndarray:
    """Decode to a 3-channel BGR image; OpenCV refuses unknown formats and truncated JPEG/PNG files.

    The size is read from the header first (Pillow reads only that), so a small file that holds a huge image is
    refused before OpenCV allocates it.
    """
    width, height = _header_size(data)
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image is {width}x{height} pixels; at most {max_pixels} pixels are accepted")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise NotAnImage(_NOT_AN_IMAGE)
    return image



def _header_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as header:
            return header.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise NotAnImage(_NOT_AN_IMAGE) from None
