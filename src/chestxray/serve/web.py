"""A small web page: upload a chest X-ray, see the class probabilities and the Grad-CAM overlay.

``python -m chestxray app`` serves it (FastAPI + uvicorn). Endpoints:

- ``GET /``: the page (``page.html``: plain HTML/CSS/JS, no external resources, works offline).
- ``POST /predict`` with JSON ``{"image": "<base64 of an image file>", "name": "<file name>"}``
  (``name`` optional, used in error messages) → ``{"classes": [...],
  "probabilities": {class: p}, "predicted": class, "threshold": t, "positive": "COVID",
  "image_size": S, "image_png": <base64 PNG of the grey input at model size>,
  "gradcam_png": <base64 PNG of the Grad-CAM overlay>, "trained_on": "synthetic · data …",
  "warning": "synthetic data: not meaningful on real X-rays"}`` (``warning`` empty for a model
  trained on real data). ``predicted`` is the class at the operating point (``serve.decision``)
  and Grad-CAM explains that class. A file that is not a
  readable image → 400 ``{"detail": message}``; a file over ``max_upload_bytes`` → 413. Decoding is
  bounded (``DecodeBudget``): from the file's header alone, an image whose decoding would take more
  than ``MAX_DECODE_BYTES`` → 413 naming its pixel size and the limit; one that finds no room
  within ``DECODE_WAIT`` seconds while other large images decode → 503 (with ``Retry-After``).
- ``GET /health`` → ``{"status": "ok", "served_rule": "At p(COVID) ≥ t: test sensitivity X [low, high],
  specificity Y [low, high] …", "trained_on": …, "warning": …, "model": {"uri", "classes", "image_size",
  "threshold", "operating_point", "data"}, "max_upload_bytes": n}``: the rule the model serves and its
  test figures (``serving.rule_line``) first, and the figures themselves (``serving.SERVED_FIGURES``);
  both null for a model logged before the figures travelled with it. ``data`` is what the model was
  trained on (``serve.provenance``). The page leads with the warning as a banner (when there is one)
  and the served rule's line (or omits it), and names the data in its footer.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from chestxray.errors import UserError
from chestxray.learn import explain
from chestxray.serve import serving
from chestxray.serve.decision import decide
from chestxray.tasks import COVID

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # the image file itself, before base64
DRAIN = 4  # an oversized request body is read and discarded up to this many times the limit
# Bytes of decoding in flight across all requests. A 13000 × 13000 1-bit PNG of 28 KB takes 338 MB:
# one at a time. The champion (64 px CNN) serves at 0.8 GB; bursts of 40 such images, or of 6000 px
# RGB or 9000 px grey ones, peaked at 1.34 GB.
MAX_DECODE_BYTES = 512 * 1024 * 1024
DECODE_WAIT = 10.0  # seconds a request waits for room in the decode budget before a 503
RETRY_AFTER = 5  # seconds, in the 503's Retry-After header
BUSY = "busy decoding other large images; retry in a few seconds"
# Peak bytes per pixel of serving.decode by the file's mode, measured (Pillow 13): the image as PIL
# stores it (RGB in 4 bytes) plus the copies made converting it to grey. Other modes count as the most.
DECODE_BYTES_PER_PIXEL = {"1": 2, "L": 2, "P": 2, "RGB": 5, "CMYK": 9, "I;16": 11, "I": 13, "F": 13, "RGBA": 16}
# Freed memory stays with the malloc arena of the thread that used it: decoding on the request threads
# (40) left each holding hundreds of MB (5.3 GB after 40 huge images, within the budget). So decode on
# 2 threads (2 cores), in PIL blocks above glibc's largest mmap threshold (32 MiB; PIL's default is
# 16 MiB): each its own mapping, returned to the system when freed.
DECODE_THREADS = 2
PIL_BLOCK_BYTES = 64 * 1024 * 1024
log = logging.getLogger(__name__)


def png_base64(array: np.ndarray) -> str:
    """A (S, S) grey or (S, S, 3) RGB uint8 array → base64 of its PNG file."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


class DecodeBudget:
    """Bytes of image decoding in flight across requests, kept at or under ``limit``."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit, self.wait = limit, wait
        self.in_flight = 0
        self._room = threading.Condition()

    def acquire(self, n: int) -> bool:
        """Take ``n`` bytes once they fit, waiting up to ``wait`` seconds; False if they did not fit
        by then (at once if ``n`` is over the whole limit: it never will)."""
        with self._room:
            if n > self.limit or not self._room.wait_for(lambda: self.in_flight + n <= self.limit, self.wait):
                return False
            self.in_flight += n
            return True

    def release(self, n: int) -> None:
        """Give back ``n`` bytes taken by ``acquire``."""
        with self._room:
            self.in_flight -= n
            self._room.notify_all()


def decode_cost(data: bytes, size: int, name: str) -> tuple[str, int]:
    """From the image file's header alone: its pixel size (``"W × H px"``) and the peak bytes
    ``serving.decode`` takes to decode it. A file PIL cannot open gets serving.decode's UserError."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = "RGBA" if im.mode == "P" and "transparency" in im.info else im.mode  # decoded through RGBA
            per_pixel = DECODE_BYTES_PER_PIXEL.get(mode, max(DECODE_BYTES_PER_PIXEL.values()))
            return f"{im.width} × {im.height} px", im.width * im.height * per_pixel
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        serving.decode(data, size, name)  # fails in the same Image.open, with the message users know
        raise


def create_app(
    model: serving.XrayClassifier, model_uri: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> FastAPI:
    """The FastAPI app around a loaded model (``serving.load``)."""
    app = FastAPI(title="chestxray", description=__doc__, docs_url=None, redoc_url=None)
    # base64 makes 4 characters of every 3 bytes; allow some room for the JSON around it.
    max_body = -(-max_upload_bytes // 3) * 4 + 1024
    too_large = f"image file too large: the limit is {_megabytes(max_upload_bytes)}"
    lock = threading.Lock()  # one TensorFlow computation at a time (2 cores; keeps memory bounded)
    budget = DecodeBudget(MAX_DECODE_BYTES, DECODE_WAIT)
    Image.core.set_block_size(PIL_BLOCK_BYTES)  # process-wide
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")

    def analyse(data: bytes, name: str) -> dict[str, Any]:
        pixels, cost = decode_cost(data, model.image_size, name)  # UserError → 400
        if cost > budget.limit:
            raise HTTPException(
                413,
                f"{name}: image too large to decode: {pixels} takes {_megabytes(cost)},"
                f" over the limit of {_megabytes(budget.limit)}",
            )
        if not budget.acquire(cost):
            raise HTTPException(503, BUSY, headers={"Retry-After": str(RETRY_AFTER)})
        try:
            image = decoder.submit(serving.decode, data, model.image_size, name).result()  # UserError → 400
        finally:
            budget.release(cost)
        with lock:
            prob = model.probabilities(image[None])
            index = decide(prob, model.classes, model.threshold)
            heatmap = explain.gradcam(model.keras_model, image[None, ..., None].astype(np.float32), class_index=index)
        return {
            "classes": list(model.classes),
            "probabilities": {c: float(p) for c, p in zip(model.classes, prob[0], strict=True)},
            "predicted": model.classes[int(index[0])],
            "threshold": model.threshold,
            "positive": COVID,
            "image_size": model.image_size,
            "image_png": png_base64(image),
            "gradcam_png": png_base64(explain.overlay(image, heatmap[0])),
            "trained_on": model.trained_on(),
            "warning": model.warning(),
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict[str, Any]:
        info = {
            "uri": model_uri,
            "classes": list(model.classes),
            "image_size": model.image_size,
            "threshold": model.threshold,
            "operating_point": model.operating_point,
            "data": model.data,
        }
        return {
            "status": "ok",
            "served_rule": model.served_rule(),
            "trained_on": model.trained_on(),
            "warning": model.warning(),
            "model": info,
            "max_upload_bytes": max_upload_bytes,
        }

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        # Read the body here (async, bounded) and run the model in the thread pool. An oversized
        # body is still read, up to DRAIN times the limit, and discarded: answering before the
        # client has sent it all would reset the connection and lose the 413 answer.
        declared = request.headers.get("content-length", "")
        oversized = declared.isdigit() and int(declared) > max_body
        if declared.isdigit() and int(declared) > DRAIN * max_body:
            raise HTTPException(413, too_large)
        body, size = bytearray(), 0
        async for chunk in request.stream():
            size += len(chunk)
            oversized = oversized or size > max_body
            if oversized and size > DRAIN * max_body:
                break
            if not oversized:
                body += chunk
        if oversized:
            raise HTTPException(413, too_large)
        try:
            payload = json.loads(body)
            value, name = payload["image"], payload.get("name") or "the uploaded file"
            if not isinstance(value, str) or not isinstance(name, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HTTPException(
                400, 'send JSON {"image": "<the image file, base64-encoded>", "name": "<optional file name>"}'
            ) from None
        try:
            data = serving.from_base64(value, name)
        except UserError as exc:
            raise HTTPException(400, str(exc)) from None
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{too_large} (got {_megabytes(len(data))})")
        try:
            return await run_in_threadpool(analyse, data, name[:200])
        except UserError as exc:
            raise HTTPException(400, str(exc)) from None

    return app


def serve(model_uri: str, host: str, port: int) -> None:
    """Load the model at ``model_uri`` and serve the page at http://host:port/ until interrupted."""
    import uvicorn

    app = create_app(serving.load(model_uri), model_uri=model_uri)
    log.info("model %s; open http://%s:%d/", model_uri, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
