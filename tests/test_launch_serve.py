"""launch.serve: the page answers as launch.predict does, in a real browser and over plain HTTP.

Over HTTP (fast, no browser): the page needs nothing from the network; an uploaded photo gets
the digit, probabilities and 28x28 image that `launch.predict` gives for the same file; bad
uploads (not an image, empty, a decompression bomb, too large, no length) get one clear line
and the server goes on serving; an ensemble folder averages its members.

In headless Chromium (Debian's `chromium`, driven by Playwright): the real command
`python -m launch.serve RUN --port 0` is started, a "0" and a "1" are drawn with mouse events,
and the page's guess, bars and 28x28 image are checked against `launch.predict` on the pad's
own PNG; a bad file opened on the page gives its message and drawing still works. The model is
a real 2-epoch MLP trained on real MNIST (shared with tests/test_launch_predict.py).

MPIGRAD_SERVE_SCREENSHOT=launch/docs/serve.png saves the screenshot of the page with a drawn
digit there (it is always taken, into the test's temporary folder otherwise).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch import predict, serve
from launch.predict import Classifier
from tests.test_launch_predict import bomb_png, make_photo, run_predict, train_once

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_h5) -> Path:
    return train_once(tmp_path_factory, mnist_h5)


def start_in_thread(classifier: Classifier, **limits) -> serve.DigitServer:
    server = serve.DigitServer(("127.0.0.1", 0), classifier, **limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(trained_run):
    """A server in this process with a 1 MB upload limit and a 4-megapixel bomb limit."""
    server = start_in_thread(Classifier(trained_run), max_upload=1 << 20, max_pixels=4_000_000)
    yield server
    server.shutdown()
    server.server_close()


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_image(server, data: bytes) -> tuple[int, dict]:
    status, body = request(server, "POST", "/predict", data)
    return status, json.loads(body)


def predict_cli(capsys, model, image: Path, seen: Path) -> tuple[dict, np.ndarray]:
    """What `python -m launch.predict MODEL IMAGE --json` says, and the 28x28 image it saw."""
    code, out, err = run_predict(capsys, model, image, "--json", "--save-preprocessed", seen)
    assert code == 0, err
    return json.loads(out), np.asarray(Image.open(seen / f"{image.name}.png"))


def digit_photo(mnist_h5, tmp_path: Path, index: int = 0) -> tuple[Path, int]:
    from data.shards import read_split
    images, labels, _ = read_split(mnist_h5, "test")
    path = tmp_path / f"photo{index}.jpg"
    make_photo(images[index], np.random.default_rng(index)).save(path, quality=85)
    return path, int(labels[index])


# -- plain HTTP --------------------------------------------------------------------------------

def test_page_is_served_whole_and_needs_no_network(server, trained_run):
    status, body = request(server, "GET", "/")
    page = body.decode()
    assert status == 200 and '<canvas id="pad"' in page
    assert str(trained_run / "best.h5") in page                  # says which model answers
    for outside in ("http:", "https:", "//cdn", "<link", "@import", "url(", "<script src"):
        assert outside not in page, outside
    assert "{{" not in page
    assert request(server, "GET", "/favicon.ico")[0] == 204
    assert request(server, "GET", "/elsewhere")[0] == 404


def test_photo_upload_answers_as_launch_predict(server, trained_run, mnist_h5, tmp_path,
                                                capsys):
    photo, label = digit_photo(mnist_h5, tmp_path)
    status, answer = post_image(server, photo.read_bytes())
    assert status == 200, answer
    expected, seen = predict_cli(capsys, trained_run, photo, tmp_path / "seen")
    assert answer["digit"] == expected["digit"] == label
    assert answer["proba"] == pytest.approx(expected["proba"], abs=2e-6)
    assert np.array_equal(np.reshape(answer["pixels"], (28, 28)), seen)


def test_bad_uploads_get_one_line_and_the_server_goes_on(server, mnist_h5, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb_png(bomb)
    for data, status, error in [
            (b"this is not a picture", 400, "not an image"),
            (b"", 400, "empty image"),
            (bomb.read_bytes(), 400, "image too large (decompression bomb)"),
            (b"\x89PNG" + bytes(2 << 20), 413, "file too large (over 1 MB)")]:
        assert post_image(server, data) == (status, {"error": error})
    blank = tmp_path / "blank.png"
    Image.new("L", (280, 280), 255).save(blank)
    assert post_image(server, blank.read_bytes()) == (400, {"error": "blank image: no ink found"})

    # A huge declared length is refused before its body is read, and the connection closed.
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", str(10 << 30))
    conn.endheaders()
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (413, {"error": "file too large "
                                                                     "(over 1 MB)"})
    conn.close()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.putrequest("POST", "/predict")            # no Content-Length at all
    conn.endheaders()
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (411, {"error": "no Content-Length"})
    conn.close()
    assert request(server, "POST", "/elsewhere", b"x")[0] == 404

    photo, label = digit_photo(mnist_h5, tmp_path, 1)            # still serving
    status, answer = post_image(server, photo.read_bytes())
    assert status == 200 and answer["digit"] == label


def test_ensemble_folder_averages_its_members(trained_run, mnist_h5, tmp_path):
    """Members: the run's best.h5 and its epoch-1 checkpoint, which has other weights."""
    folder = tmp_path / "ensemble"
    for m, source in enumerate([trained_run / "best.h5", trained_run / "ckpt-e001-s00000.h5"]):
        (folder / f"member-{m}").mkdir(parents=True)
        shutil.copy(source, folder / f"member-{m}" / "best.h5")
    ensemble = Classifier(folder)
    assert ensemble.describe() == f"{folder} (ensemble of 2 models)"
    ensemble_server = start_in_thread(ensemble)
    try:
        photo, label = digit_photo(mnist_h5, tmp_path, 2)
        status, answer = post_image(ensemble_server, photo.read_bytes())
    finally:
        ensemble_server.shutdown()
        ensemble_server.server_close()
    assert status == 200 and answer["digit"] == label
    image = np.reshape(answer["pixels"], (1, 28, 28)).astype(np.uint8)
    members = [Classifier(folder / f"member-{m}").proba(image)[0] for m in range(2)]
    assert not np.allclose(members[0], members[1])
    assert answer["proba"] == pytest.approx(np.mean(members, axis=0), abs=1e-6)


def test_without_a_model_it_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MPIGRAD_MODELS", str(tmp_path / "no-models"))
    assert serve.main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {predict.HOW_TO_GET_A_MODEL}"]
    assert "mpirun -n 2 python -m dist.train --preset best" in err


# -- a real browser ----------------------------------------------------------------------------

def find_chromium() -> str | None:
    candidates = [os.environ.get("MPIGRAD_CHROMIUM", ""), "chromium", "chromium-browser",
                  "google-chrome"]
    return next((found for name in candidates if name and (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def served_url(trained_run):
    """`python -m launch.serve RUN --port 0` as a user starts it; its printed address."""
    proc = subprocess.Popen([sys.executable, "-m", "launch.serve", str(trained_run),
                             "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {trained_run / 'best.h5'} on http://127.0.0.1:"), line
        yield line.split(" on ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(served_url):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium): "
                    "the browser test needs a real browser")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 720, "height": 490})
        page.goto(served_url)
        yield page
        browser.close()


def draw(page, points: list[tuple[float, float]]) -> None:
    """One stroke through `points` (pad pixels, 0..280) with the mouse; wait for the answer."""
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
    page.mouse.up()
    page.wait_for_selector("body[data-state=idle]")


def shown(page) -> tuple[str, list[float], np.ndarray]:
    """The digit, the bars' probabilities and the 28x28 image on the page."""
    digit = page.locator("#digit").text_content()
    proba = [float(p) for p in page.eval_on_selector_all(".bar", "rows => rows.map("
                                                                 "r => r.dataset.p)")]
    pixels = page.evaluate("Array.from(document.getElementById('seen').getContext('2d')"
                           ".getImageData(0, 0, 28, 28).data)")
    return digit, proba, np.reshape(pixels, (28, 28, 4))[..., 0].astype(np.uint8)


def pad_png(page, path: Path) -> Path:
    data_url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    path.write_bytes(base64.b64decode(data_url.split(",", 1)[1]))
    return path


def zero() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 40)
    return list(zip(140 + 55 * np.sin(t), 140 - 85 * np.cos(t)))


ONE = [(150, 45), (145, 140), (140, 235)]


def test_drawing_shows_what_launch_predict_says(page, trained_run, tmp_path, capsys):
    for name, stroke, digit in [("zero", zero(), "0"), ("one", ONE, "1")]:
        page.click("#clear")
        draw(page, stroke)
        shown_digit, shown_proba, shown_pixels = shown(page)
        expected, seen = predict_cli(capsys, trained_run, pad_png(page, tmp_path / f"{name}.png"),
                                     tmp_path / "seen")
        assert shown_digit == str(expected["digit"]) == digit, name
        assert shown_proba == pytest.approx(expected["proba"], abs=2e-6)
        assert np.array_equal(shown_pixels, seen)
        assert page.locator("#message").text_content() == ""
        if digit == "0":
            page.screenshot(path=os.environ.get("MPIGRAD_SERVE_SCREENSHOT")
                            or str(tmp_path / "serve.png"))


def test_bad_file_on_the_page_gives_its_message_and_drawing_goes_on(page):
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png",
                                          "buffer": b"this is not a picture"}])
    page.wait_for_function("document.getElementById('message').textContent !== ''")
    page.wait_for_selector("body[data-state=idle]")
    assert page.locator("#message").text_content() == "notes.png: not an image"
    assert page.locator("#digit").text_content() == ""
    draw(page, ONE)
    assert shown(page)[0] == "1"
    assert page.locator("#message").text_content() == ""
