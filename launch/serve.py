"""Draw a digit in the browser and watch the network guess it: a small local web server.

    python -m launch.serve runs/<name>                 # a run folder (its best.h5) or a .h5 file
    python -m launch.serve runs/<ensemble name>        # an ensemble folder: members averaged
    python -m launch.serve                             # the model shipped in launch/models/
    python -m launch.serve runs/<name> --host 0.0.0.0 --port 8080

then open the address it prints (http://127.0.0.1:8000/ by default). Draw with the mouse or a
finger, or drop a photo on the pad: the page shows the probabilities of 0-9 as one draws, and
the 28x28 image the network saw, prepared exactly as `launch.predict` prepares a file
(launch/images.py). The page is one file, launch/serve_page.html, served from here: it needs no
network (no CDN, no web fonts).

    GET  /          the page
    POST /predict   body: the bytes of an image file (the pad as PNG, or a dropped photo)
                    200 {"digit": d, "proba": [10 floats], "pixels": [784 ints 0..255]}
                    400/411/413 {"error": "one line"}: not an image, a decompression bomb,
                    no Content-Length, larger than --max-upload-mb

The model is loaded once, at start. Bad uploads are answered with their reason and the server
goes on serving; Ctrl-C stops it.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dist.errors import ExpectedError
from dist.evaluate import add_tta_option
from launch.images import MAX_IMAGE_PIXELS, ImageError, preprocess_file
from launch.predict import Classifier, add_max_pixels_option, load_classifier, pixel_limit

PAGE = Path(__file__).resolve().parent / "serve_page.html"
MAX_UPLOAD_MB = 10          # a phone photo is 2-8 MB
UPLOAD_CEILING_MB = 1024    # the most --max-upload-mb allows: each upload is held in memory
DRAIN_FACTOR = 4            # an upload up to 4x the limit is read and dropped, to answer it
REQUEST_TIMEOUT = 30        # seconds a client may take to send its request


class DigitServer(ThreadingHTTPServer):
    """An HTTP server that holds one classifier and the page that talks to it."""

    def __init__(self, address: tuple[str, int], classifier: Classifier,
                 max_upload: int = MAX_UPLOAD_MB << 20, max_pixels: int = MAX_IMAGE_PIXELS):
        super().__init__(address, DigitHandler)
        self.classifier = classifier
        self.max_upload = max_upload
        self.max_pixels = max_pixels
        # One prediction at a time: the model's buffers and Pillow's bomb limit are shared.
        self.lock = threading.Lock()
        self.page = (PAGE.read_text()
                     .replace("{{MODEL}}", html.escape(classifier.describe()))
                     .replace("{{MAX_UPLOAD}}", str(max_upload))).encode()

    def classify(self, data: bytes) -> dict:
        """An uploaded image file -> the JSON answer; ImageError if it cannot be classified."""
        with self.lock:
            image = preprocess_file(data, self.max_pixels)          # uint8 (28, 28)
            proba = self.classifier.proba(image[None])[0]
        return {"digit": int(proba.argmax()), "proba": [float(p) for p in proba],
                "pixels": image.ravel().tolist()}


class DigitHandler(BaseHTTPRequestHandler):
    server: DigitServer
    timeout = REQUEST_TIMEOUT
    server_version = "mpigrad-serve"

    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/", "/index.html"):
            self.send_body(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif self.path == "/favicon.ico":      # browsers ask for it; there is none
            self.send_body(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.close_connection = True   # the body's end is unknown: we cannot read on
            self.send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "no Content-Length"})
            return
        length, limit = int(length), self.server.max_upload
        if length > limit:
            self.refuse_upload(length, limit)
            return
        data = self.rfile.read(length)
        try:
            answer = self.server.classify(data)
        except ImageError as err:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        except Exception as err:   # a bug of ours: say so, and keep serving the others
            traceback.print_exc()
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                           {"error": f"internal error ({type(err).__name__}), see the server"})
            return
        self.send_json(HTTPStatus.OK, answer)

    def refuse_upload(self, length: int, limit: int) -> None:
        """413 for a body over the limit. A browser reads the answer only once it has sent the
        whole body, so a moderately large one is read (in chunks, dropped); a huge one is
        answered at once and the connection closed."""
        if length <= DRAIN_FACTOR * limit:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)
        else:
            self.close_connection = True
        self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"file too large (over {limit / 2**20:.0f} MB)"})

    def send_json(self, status: HTTPStatus, obj: dict) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json")

    def send_body(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:
        """Quiet: a live drawing sends a request per stroke, and the page shows the user's
        errors (4xx; a stroke just begun may be "blank"). Only our own failures (5xx) show."""
        if str(int(code) if isinstance(code, HTTPStatus) else code).startswith("5"):
            super().log_request(code, size)


def check_options(args) -> None:
    """--port and --max-upload-mb in range, each a one-line ExpectedError otherwise (the socket
    and int() would answer them with a traceback)."""
    if not 0 <= args.port <= 65535:
        raise ExpectedError(f"--port {args.port}: must be 1 to 65535 (or 0: any free port)")
    mb = args.max_upload_mb
    if not 0 < mb <= UPLOAD_CEILING_MB:   # also false for nan
        raise ExpectedError(f"--max-upload-mb {mb}: must be more than 0 and at most "
                            f"{UPLOAD_CEILING_MB} (each upload is held in memory)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", metavar="RUN_OR_CHECKPOINT",
                        help="checkpoint file, run folder (its best.h5) or ensemble folder "
                             "(default: the model shipped in launch/models/)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (default %(default)s)")
    add_max_pixels_option(parser)
    add_tta_option(parser)
    args = parser.parse_args(argv)
    try:
        check_options(args)   # before the model is loaded: the cheap mistakes first
        max_pixels = pixel_limit(args.max_pixels)
        classifier = load_classifier(args.model, tta=args.tta)
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        server = DigitServer((args.host, args.port), classifier,
                             int(args.max_upload_mb * 2**20), max_pixels)
    except OSError as err:   # port in use, address not on this machine, ...
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving {classifier.describe()} on http://{host}:{port}/  (Ctrl-C to stop)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
