"""The web page (chestxray.serve.web): its API on a live uvicorn server, the page itself driven in
headless Chromium on a real X-ray from ../shared (with the warning of a model trained on synthetic
data), and the memory of ``python -m chestxray app`` under a burst of huge images."""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from chestxray.data.cache import cache_meta
from chestxray.errors import UserError
from chestxray.judge.operating_point import exact_interval
from chestxray.learn import explain
from chestxray.serve import provenance, serving, web
from chestxray.serve.decision import decide
from chestxray.serve.provenance import SYNTHETIC_WARNING
from chestxray.tasks import COVID
from conftest import CHROMIUM_ARGS, LOOPBACK, SHARED

XRAY = SHARED / "data/covid19-radiography-sample/COVID-19_Radiography_Dataset/COVID/images/COVID-1.png"
NOT_AN_IMAGE = b"patient notes: this is a text file, not an X-ray\n"
HUGE_SIDE = 13000  # px: PIL decodes the 1-bit PNG to 169 MB, and serving.decode takes twice that
BURST = 40  # concurrent requests: as many as the server's thread pool runs at once
PEAK_LIMIT = 2 * 1024**3  # bytes of the server's peak resident memory (VmHWM)
log = logging.getLogger(__name__)


def call(url: str, body: bytes | Iterator[bytes] | None = None, timeout: float = 120) -> tuple[int, dict | str]:
    """GET (no body) or POST ``body`` as JSON; an iterator is sent chunked (no Content-Length).
    Returns the status and the decoded JSON (or text) answer."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body is not None else {}
    )
    try:
        with LOOPBACK.open(request, timeout=timeout) as response:
            status, text, kind = response.status, response.read().decode(), response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, text, kind = exc.code, exc.read().decode(), exc.headers.get_content_type()
    return status, json.loads(text) if kind == "application/json" else text


def predict(url: str, data: bytes, name: str | None = None) -> tuple[int, dict]:
    request = {"image": base64.b64encode(data).decode()} | ({"name": name} if name else {})
    return call(f"{url}/predict", json.dumps(request).encode())


def png_array(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.format == "PNG"
        return np.asarray(im)


@pytest.fixture(scope="module")
def logged(trained_model: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The session's CNN logged as a pyfunc model in a module-wide SQLite store. Its threshold is
    chosen so that on the real X-ray the operating point disagrees with the argmax (when ../shared
    is there), so a server that ignored it would fail the tests. Its run carries the tags training
    sets for the session's synthetic data, so the model warns that it was trained on synthetic data."""
    import keras

    import chestxray.learn.models  # noqa: F401  (custom objects)
    from chestxray.tracking import experiment_id

    meta = cache_meta(cache_dir)
    classes = list(meta["classes"])
    threshold = 0.5
    if XRAY.is_file():
        image = serving.decode(XRAY.read_bytes(), 32, XRAY.name)
        prob = keras.models.load_model(trained_model, compile=False).predict(
            image[None, ..., None].astype("float32"), verbose=0
        )[0]
        p_covid = float(prob[classes.index(COVID)])
        threshold = (1 + p_covid) / 2 if prob.argmax() == classes.index(COVID) else p_covid / 2
    store = tmp_path_factory.mktemp("web-mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        op = operating_point_at(threshold)
        data_tags = {"data.source": "synthetic", "data_version": meta["data_version"]}
        with mlflow.start_run(experiment_id=experiment_id(), tags=data_tags) as run:
            serving.log_model(trained_model, classes, 32, op)
        with mlflow.start_run(experiment_id=experiment_id()) as old_run:  # as logged before the test figures
            serving._log_pyfunc(trained_model, {"classes": classes, "image_size": 32, "threshold": threshold})
        uri = f"runs:/{run.info.run_id}/model"
        yield SimpleNamespace(
            uri=uri,
            model=serving.load(uri),
            old_model=serving.load(f"runs:/{old_run.info.run_id}/model"),
            classes=classes,
            threshold=threshold,
            operating_point=op,
            data_version=meta["data_version"],
            trained_on=f"synthetic · data {meta['data_version']}",
            tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        )


def operating_point_at(threshold: float) -> dict:
    """An operating point as evaluate writes it (judge.operating_point), at ``threshold``: 88 of
    97 COVID and 301 of 310 other test images right."""
    return {
        "threshold": threshold,
        "rule": "point",
        "target_sensitivity": 0.9,
        "target_met": True,
        "val_sensitivity": 0.9,
        "val_sensitivity_lower_bound": 0.82,
        "val_specificity": 0.95,
        "val_positives": 60,
        "sensitivity": round(88 / 97, 6),
        "specificity": round(301 / 310, 6),
        "positives": 97,
        "negatives": 310,
        "ci": {"sensitivity": exact_interval(88, 97), "specificity": exact_interval(301, 310)},
    }


def served_line(logged: SimpleNamespace) -> str:
    """The line the page and /health lead with, from the values logged (not from the loaded model)."""
    op = logged.operating_point
    sensitivity, specificity = op["ci"]["sensitivity"], op["ci"]["specificity"]
    return (
        f"At p(COVID) ≥ {logged.threshold:.3f}: test sensitivity 0.907 [{sensitivity['low']:.3f},"
        f" {sensitivity['high']:.3f}], specificity 0.971 [{specificity['low']:.3f}, {specificity['high']:.3f}]"
        " (exact 95 % intervals; 97 COVID and 310 other test images). Threshold chosen on validation by the"
        " point rule for sensitivity 0.9."
    )


@contextmanager
def live(app: FastAPI) -> Iterator[str]:
    """``app`` on a live uvicorn server (a thread, 127.0.0.1, a free port): its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def server(logged: SimpleNamespace) -> Iterator[str]:
    """``web.create_app`` on a live uvicorn server: its base URL."""
    with live(web.create_app(logged.model, model_uri=logged.uri)) as url:
        yield url


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(side: int) -> bytes:
    """A side × side 1-bit grey PNG of horizontal stripes, compressed row by row (so never held
    whole): 28 KB at 13000 px."""
    compressor = zlib.compressobj(9)
    row_bytes = -(-side // 8)
    rows = (b"\x00" + (b"\xaa" if (y // 500) % 2 else b"\x00") * row_bytes for y in range(side))
    idat = b"".join(compressor.compress(row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grey, no interlace
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A 13000 × 13000 px PNG file of 28 KB."""
    return bilevel_png(HUGE_SIDE)


@pytest.fixture
def xray(shared: Path) -> Path:
    """A real COVID-19 X-ray (PNG, 299×299) from the Radiography sample in ../shared."""
    assert XRAY.is_file(), XRAY
    return XRAY


def expected(logged: SimpleNamespace, path: Path) -> tuple[np.ndarray, dict[str, float], str]:
    """What the model computes directly for the file: (grey image, probabilities, class at the operating point)."""
    image = serving.decode(path.read_bytes(), logged.model.image_size, path.name)
    prob = logged.model.probabilities(image[None])
    predicted = logged.classes[int(decide(prob, logged.classes, logged.threshold)[0])]
    return image, dict(zip(logged.classes, prob[0].tolist(), strict=True)), predicted


def not_an_image_message(name: str = "the uploaded file") -> str:
    with pytest.raises(UserError) as exc:
        serving.decode(NOT_AN_IMAGE, 32, name)
    return str(exc.value)


def test_page_is_one_self_contained_file(server: str) -> None:
    status, html = call(f"{server}/")
    assert status == 200
    assert "not a diagnostic device" in html
    for anchor in (
        'id="file"',
        'accept="image/*"',
        'id="served-rule"',
        'id="data-warning"',
        'id="predicted"',
        'id="probabilities"',
        'id="overlay"',
        'id="error"',
    ):
        assert anchor in html
    # Works offline: nothing loaded from elsewhere.
    for external in ('src="http', "src='http", 'href="http', "url(http", "@import", "//cdn"):
        assert external not in html


def test_health_describes_the_model(server: str, logged: SimpleNamespace) -> None:
    status, body = call(f"{server}/health")
    assert status == 200
    assert body["status"] == "ok"
    assert list(body)[:2] == ["status", "served_rule"]  # it leads with the served rule's test figures
    assert body["served_rule"] == served_line(logged)
    assert (body["trained_on"], body["warning"]) == (logged.trained_on, SYNTHETIC_WARNING)
    assert body["model"] == {
        "uri": logged.uri,
        "classes": logged.classes,
        "image_size": 32,
        "threshold": pytest.approx(logged.threshold),
        "operating_point": {key: logged.operating_point[key] for key in serving.SERVED_FIGURES},
        "data": {
            "source": "synthetic",
            "dataset": "synthetic",
            "data_version": logged.data_version,
            "synthetic": True,
        },
    }
    assert body["max_upload_bytes"] == web.MAX_UPLOAD_BYTES


def test_health_of_a_model_logged_without_test_figures(logged: SimpleNamespace) -> None:
    with live(web.create_app(logged.old_model, model_uri="old")) as url:
        status, body = call(f"{url}/health")
    assert status == 200 and body["served_rule"] is None
    assert body["model"]["operating_point"] is None and body["model"]["threshold"] == pytest.approx(logged.threshold)
    assert (body["trained_on"], body["warning"]) == ("unknown", "")  # nor the data it was trained on


@pytest.mark.shared
def test_predict_a_real_xray(server: str, logged: SimpleNamespace, xray: Path) -> None:
    image, prob, predicted = expected(logged, xray)
    status, body = predict(server, xray.read_bytes())
    assert status == 200, body
    assert body["classes"] == logged.classes
    assert body["probabilities"] == pytest.approx(prob, abs=1e-6)
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-6)
    # The operating point, not the argmax (the threshold was chosen so that the two differ).
    assert body["predicted"] == predicted != max(prob, key=prob.get)
    assert body["threshold"] == pytest.approx(logged.threshold) and body["positive"] == COVID
    assert (body["trained_on"], body["warning"]) == (logged.trained_on, SYNTHETIC_WARNING)
    shown = png_array(body["image_png"])
    assert shown.shape == (32, 32) and np.array_equal(shown, image)
    overlay = png_array(body["gradcam_png"])
    assert overlay.shape == (32, 32, 3) and overlay.dtype == np.uint8
    assert overlay.std() > 1, "the overlay is constant"
    # Grad-CAM of the predicted class (at the operating point), not of the most probable one.
    index = np.array([logged.classes.index(predicted)])
    heatmap = explain.gradcam(logged.model.keras_model, image[None, ..., None].astype(np.float32), class_index=index)
    np.testing.assert_allclose(overlay, explain.overlay(image, heatmap[0]), atol=2)


def test_not_an_image_is_a_400_with_the_message(server: str) -> None:
    status, body = predict(server, NOT_AN_IMAGE)
    assert status == 400
    assert body == {"detail": not_an_image_message()}
    assert "not an image file" in body["detail"]
    # With the file's name (as the page sends it), the message names it.
    status, body = predict(server, NOT_AN_IMAGE, name="notes.txt")
    assert (status, body) == (400, {"detail": not_an_image_message("notes.txt")})
    assert body["detail"].startswith("notes.txt: ")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", 'send JSON {"image"'),
        (b'{"picture": "aGVsbG8="}', 'send JSON {"image"'),
        (b'{"image": 42}', 'send JSON {"image"'),
        (b'{"image": "aGVsbG8=", "name": 7}', 'send JSON {"image"'),
        (b'["image"]', 'send JSON {"image"'),
        (b'{"image": "not base64!"}', "not valid base64"),
    ],
)
def test_malformed_requests_are_400(server: str, body: bytes, detail: str) -> None:
    status, answer = call(f"{server}/predict", body)
    assert status == 400
    assert detail in answer["detail"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's, for 169 Mpx: expected here
def test_an_image_too_large_to_decode_is_413_from_its_header(
    logged: SimpleNamespace, huge_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "MAX_DECODE_BYTES", 100 * 1024 * 1024)
    with live(web.create_app(logged.model)) as url:
        status, body = predict(url, huge_png, name="scan.png")
        assert status == 413
        assert body == {
            "detail": "scan.png: image too large to decode: 13000 × 13000 px takes 322.3 MB, over the limit of 100.0 MB"
        }
        small = io.BytesIO()
        Image.new("L", (299, 299), 90).save(small, format="PNG")
        assert predict(url, small.getvalue())[0] == 200


def test_upload_limit_is_413(server: str) -> None:
    limit = web.MAX_UPLOAD_BYTES
    # At the limit the file is accepted (and rejected only as not an image) …
    status, body = predict(server, b"x" * limit)
    assert status == 400 and body["detail"] == not_an_image_message()
    # … one byte more is refused, whether the body's size is declared or not (chunked).
    status, body = predict(server, b"x" * (limit + 1))
    assert status == 413 and "too large" in body["detail"]
    payload = json.dumps({"image": base64.b64encode(b"x" * (2 * limit)).decode()}).encode()
    step = 1 << 20
    chunks = (payload[i : i + step] for i in range(0, len(payload), step))
    status, body = call(f"{server}/predict", chunks)
    assert status == 413 and "too large" in body["detail"]


@pytest.fixture(scope="module")
def app_process(logged: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``python -m chestxray app --model runs:/…`` in a subprocess on a free port: its base URL and pid."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path_factory.mktemp("web-app")
    log = folder / "app.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged.tracking_uri}
    command = [
        sys.executable,
        "-m",
        "chestxray",
        "app",
        "--model",
        logged.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`{' '.join(command)}` exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if call(f"{url}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the app did not answer within 180 s:\n{log.read_text()}"
            time.sleep(0.5)
        yield SimpleNamespace(url=url, pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.browser
@pytest.mark.shared
def test_page_in_chromium(
    chromium: Path, app_process: SimpleNamespace, logged: SimpleNamespace, xray: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    _, prob, predicted = expected(logged, xray)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            script_errors: list[str] = []
            page.on("pageerror", lambda exc: script_errors.append(str(exc)))
            page.goto(app_process.url)
            assert page.title() == "Chest X-ray classifier"
            assert "not a diagnostic device" in page.inner_text(".note")
            page.wait_for_function("document.getElementById('model').textContent.includes('runs:/')")
            assert page.is_visible("#served-rule") and page.inner_text("#served-rule") == served_line(logged)
            # a model trained on synthetic data: a banner above everything else says so
            assert page.is_visible("#data-warning") and page.inner_text("#data-warning") == (
                f"Warning: {SYNTHETIC_WARNING} (this model was trained on {logged.trained_on})."
            )
            assert page.eval_on_selector("#data-warning", "e => e.getBoundingClientRect().top") < page.eval_on_selector(
                ".note", "e => e.getBoundingClientRect().top"
            )
            assert f"trained on {logged.trained_on}" in page.inner_text("#model")

            page.set_input_files("#file", str(xray))
            page.wait_for_selector("body[data-state=done]", timeout=120_000)
            rows = page.eval_on_selector_all(
                "#probabilities tbody tr", "rows => rows.map(r => [r.dataset.class, Number(r.dataset.p)])"
            )
            shown = dict(rows)
            assert shown == pytest.approx(prob, abs=1e-6)
            assert [p for _, p in rows] == sorted(shown.values(), reverse=True), "rows are sorted high to low"
            assert page.inner_text("#predicted") == predicted
            assert page.inner_text("#trained-on") == f"Model trained on {logged.trained_on}."
            assert float(page.get_attribute("#rule", "data-threshold")) == pytest.approx(logged.threshold)
            assert page.eval_on_selector("#overlay img", "img => img.complete && img.naturalWidth") == 32
            assert page.eval_on_selector("#input", "img => img.complete && img.naturalWidth") == 32
            assert page.is_visible("#overlay img") and page.is_hidden("#error")
            page.screenshot(path=tmp_path / "result.png", full_page=True)

            page.set_input_files(
                "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": NOT_AN_IMAGE}]
            )
            page.wait_for_selector("body[data-state=error]", timeout=60_000)
            assert page.is_visible("#error")
            assert page.inner_text("#error") == not_an_image_message("notes.txt")
            assert page.is_hidden("#result") and page.is_hidden("#overlay img")
            page.screenshot(path=tmp_path / "error.png", full_page=True)

            with live(web.create_app(logged.old_model, model_uri="old")) as old:  # no test figures: no line
                page.goto(old)
                page.wait_for_function("document.getElementById('model').textContent.includes('old')")
                assert page.is_hidden("#served-rule") and page.inner_text("#served-rule") == ""
                assert page.is_hidden("#data-warning") and "trained on unknown" in page.inner_text("#model")
            # Trained on real data: named, no banner. Its settings' data is planted on the loaded
            # model (no model here was trained on real data).
            real = copy.copy(logged.model)
            real.data = provenance.training_data(
                "kaggle", "tawsifurrahman/covid19-radiography-database", "0123abcd4567"
            )
            with live(web.create_app(real, model_uri="kaggle")) as url:
                page.goto(url)
                page.wait_for_function("document.getElementById('model').textContent.includes('kaggle')")
                assert page.is_hidden("#data-warning") and page.inner_text("#data-warning") == ""
                assert (
                    "trained on kaggle tawsifurrahman/covid19-radiography-database · data 0123abcd4567"
                    in page.inner_text("#model")
                )
            assert script_errors == []
        finally:
            browser.close()


def peak_memory(pid: int) -> int:
    """The peak resident memory of process ``pid`` so far (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def post(url: str, body: bytes) -> tuple[int | None, dict, str | None]:
    """POST the JSON ``body`` to /predict: the status, the JSON answer and its Retry-After header;
    status None if no answer came within a minute."""
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
    try:
        with LOOPBACK.open(request, timeout=60) as response:
            return response.status, json.load(response), response.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc), exc.headers.get("Retry-After")
    except OSError:  # timed out, or the connection was refused or reset
        return None, {}, None


def test_the_app_holds_its_memory_under_a_burst_of_huge_images(
    app_process: SimpleNamespace, logged: SimpleNamespace, huge_png: bytes
) -> None:
    body = json.dumps({"image": base64.b64encode(huge_png).decode(), "name": "huge.png"}).encode()
    before = peak_memory(app_process.pid)
    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(lambda _: post(app_process.url, body), range(BURST)))
    peak = peak_memory(app_process.pid)
    counts = Counter(status for status, _, _ in answers)
    log.info("%d requests: %s; peak RSS %.0f MB (%.0f MB before)", BURST, dict(counts), peak / 1e6, before / 1e6)
    assert peak < PEAK_LIMIT, f"peak RSS {peak / 1e6:.0f} MB (answers {dict(counts)})"
    assert set(counts) <= {200, 413, 503}, counts  # None: no answer
    for status, answer, retry_after in answers:
        if status == 503:
            assert (answer, retry_after) == ({"detail": web.BUSY}, str(web.RETRY_AFTER))
        if status == 413:
            assert answer["detail"].startswith(f"huge.png: image too large to decode: {HUGE_SIDE} × {HUGE_SIDE} px")
    done = [answer for status, answer, _ in answers if status == 200]
    assert done, counts
    prob = done[0]["probabilities"]
    assert list(prob) == logged.classes and all(0 <= p <= 1 for p in prob.values())
    assert sum(prob.values()) == pytest.approx(1, abs=1e-6) and done[0]["predicted"] in logged.classes
    assert all(answer["probabilities"] == prob for answer in done)
