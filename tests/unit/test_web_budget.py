"""The web page's bounded decoding (chestxray.serve.web): the decode budget shared across requests,
and the cost of an image read from its header alone."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from chestxray.errors import UserError
from chestxray.serve import serving
from chestxray.serve.web import DecodeBudget, decode_cost

WAIT = 0.5  # seconds


def png(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


def test_requests_are_admitted_while_they_fit_and_refused_after_the_wait() -> None:
    budget = DecodeBudget(100, WAIT)
    assert budget.acquire(60) and budget.acquire(40) and budget.in_flight == 100
    start = time.monotonic()
    assert not budget.acquire(1)
    assert WAIT - 0.05 < time.monotonic() - start < WAIT + 1
    budget.release(40)
    assert budget.acquire(40) and budget.in_flight == 100


def test_a_request_waits_until_another_gives_its_bytes_back() -> None:
    budget = DecodeBudget(100, wait=10)
    assert budget.acquire(80)
    threading.Timer(0.2, budget.release, args=(80,)).start()
    start = time.monotonic()
    assert budget.acquire(50)
    assert 0.15 < time.monotonic() - start < 5
    assert budget.in_flight == 50


def test_a_cost_over_the_whole_limit_is_refused_at_once() -> None:
    budget = DecodeBudget(100, WAIT)
    start = time.monotonic()
    assert not budget.acquire(101)
    assert time.monotonic() - start < 0.1 and budget.in_flight == 0
    assert budget.acquire(100)


@pytest.mark.parametrize(
    ("image", "options", "per_pixel"),
    [
        (Image.new("L", (300, 200)), {}, 2),
        (Image.new("1", (300, 200)), {}, 2),
        (Image.new("RGB", (300, 200)), {}, 5),
        (Image.new("RGBA", (300, 200)), {}, 16),
        (Image.new("P", (300, 200)), {"transparency": 0}, 16),  # converted to grey through RGBA
        (Image.new("LA", (300, 200)), {}, 16),  # a mode not in the table counts as the most
    ],
)
def test_the_cost_comes_from_the_header(image: Image.Image, options: dict, per_pixel: int) -> None:
    assert decode_cost(png(image, **options), 32, "x.png") == ("300 × 200 px", 300 * 200 * per_pixel)


@pytest.mark.parametrize("data", [b"patient notes, not an X-ray\n", b"", png(Image.new("L", (8, 8)))[:20]])
def test_a_file_that_does_not_open_gets_the_message_of_serving_decode(data: bytes) -> None:
    with pytest.raises(UserError) as expected:
        serving.decode(data, 32, "notes.txt")
    with pytest.raises(UserError) as got:
        decode_cost(data, 32, "notes.txt")
    assert str(got.value) == str(expected.value)
