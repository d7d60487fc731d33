"""launch.predict: MNIST test digits made into noisy "photos" are classified as well as the raw
digits; bad files are one line each and the batch goes on; --json and --save-preprocessed.

The checkpoint comes from a real 2-epoch MLP run on real MNIST (`trained_run`, trained once
per session and shared with tests/test_launch_report.py).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.shards import read_split
from dist.evaluate import model_from_checkpoint, predict_scores
from launch import predict
from launch.images import preprocess_gray

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 200


def train_once(tmp_path_factory, mnist_h5) -> Path:
    """A trained run folder, made once per session whichever test module asks first."""
    run_dir = tmp_path_factory.getbasetemp() / "launch-run" / "mlp"
    if not (run_dir / "final.json").is_file():
        cmd = [sys.executable, "-m", "dist.train", "--preset", "mlp",
               "--set", f"data.path={mnist_h5}", "--set", "train.epochs=2",
               "--set", f"run.dir={run_dir.parent}", "--set", "run.name=mlp",
               "--set", "run.progress=false"]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    return run_dir


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_h5) -> Path:
    return train_once(tmp_path_factory, mnist_h5)


@pytest.fixture(scope="module")
def test_digits(mnist_h5):
    images, labels, _ = read_split(mnist_h5, "test")
    pick = np.random.default_rng(7).choice(len(images), N_PHOTOS, replace=False)
    return images[pick], labels[pick]


def make_photo(digit: np.ndarray, rng) -> Image.Image:
    """A 28x28 MNIST digit as a photo: dark ink on light paper, enlarged, off-centre on a
    non-square sheet, unevenly lit, with Gaussian noise."""
    side = int(rng.integers(120, 300))
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC),
                     dtype=np.float64) / 255
    h, w = int(rng.integers(side + 30, side + 200)), int(rng.integers(side + 60, side + 300))
    sheet = np.zeros((h, w))
    top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    sheet[top:top + side, left:left + side] = np.clip(big, 0, 1)
    paper, ink = rng.uniform(180, 240), rng.uniform(15, 70)
    yy, xx = np.mgrid[0:h, 0:w]
    light = 1 + 0.1 * (xx / w - 0.5) - 0.06 * (yy / h - 0.5)
    photo = (paper + (ink - paper) * sheet) * light + rng.normal(0, 8, (h, w))
    return Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))


def run_predict(capsys, *args) -> tuple[int, str, str]:
    code = predict.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_photos_as_accurate_as_raw_digits(trained_run, test_digits, tmp_path, capsys):
    images, labels = test_digits
    model, _ = model_from_checkpoint(trained_run / "best.h5")
    raw_acc = float((predict_scores(model, images).argmax(1) == labels).mean())

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    truth = {}
    for k, (digit, label) in enumerate(zip(images, labels)):
        photo = make_photo(digit, rng)
        if k % 4 == 1:
            photo = photo.convert("RGB")       # colour JPEG, as from a phone
        name = f"{k:03d}.{'jpg' if k % 2 else 'png'}"
        photo.save(folder / name, **({"quality": 80} if k % 2 else {}))
        truth[str(folder / name)] = int(label)

    code, out, err = run_predict(capsys, trained_run / "best.h5", folder, "--json")
    assert code == 0, err
    assert err == ""
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in results] == sorted(truth)       # every file, sorted
    photo_acc = np.mean([r["digit"] == truth[r["path"]] for r in results])
    print(f"raw accuracy {raw_acc:.3f}, photo accuracy {photo_acc:.3f}")
    assert raw_acc > 0.93
    assert photo_acc >= raw_acc - 0.03
    for r in results:
        assert len(r["top"]) == 3 and r["top"][0]["digit"] == r["digit"]
        assert [t["p"] for t in r["top"]] == sorted((t["p"] for t in r["top"]), reverse=True)
        assert sum(r["proba"]) == pytest.approx(1, abs=1e-4)


def test_polarity_size_and_position_do_not_matter(test_digits):
    """Light-on-dark and dark-on-light, small and large, give nearly the same 28x28 input."""
    digit = test_digits[0][3]
    frame = np.zeros((90, 140))
    big = np.asarray(Image.fromarray(digit).resize((56, 56), Image.Resampling.BICUBIC)) / 255
    frame[5:61, 70:126] = big
    light = preprocess_gray(frame)
    dark = preprocess_gray(1 - 0.8 * frame)
    raw = preprocess_gray(digit / 255)
    assert light.shape == dark.shape == (28, 28) and light.dtype == np.uint8
    assert np.abs(light.astype(int) - dark.astype(int)).mean() < 3
    assert np.abs(light.astype(int) - raw.astype(int)).mean() < 25
    # Centre of mass at the centre, ink fitted into 20x20 as in MNIST.
    yy, xx = np.mgrid[0:28, 0:28]
    assert abs((light * yy).sum() / light.sum() - 14) <= 0.6
    assert abs((light * xx).sum() / light.sum() - 14) <= 0.6
    rows, cols = np.nonzero(light)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 22


def test_speck_far_from_the_digit_is_ignored(test_digits):
    digit = test_digits[0][5]
    sheet = np.zeros((200, 260))
    sheet[40:124, 30:114] = np.asarray(Image.fromarray(digit).resize((84, 84))) / 255
    clean = preprocess_gray(sheet)
    sheet[180:184, 240:244] = 1.0                    # a dust speck in the far corner
    with_speck = preprocess_gray(sheet)
    assert np.abs(with_speck.astype(int) - clean.astype(int)).mean() < 2


def bomb_png(path: Path, side: int = 100_000) -> None:
    """A tiny PNG whose header declares side x side pixels (10 gigapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)    # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_bad_files_are_one_line_each_and_the_batch_goes_on(trained_run, test_digits,
                                                           tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_text.png").write_text("this is not a picture\n")
    (folder / "b_zero.png").write_bytes(b"")
    Image.new("L", (300, 200), 255).save(folder / "c_white.png")
    bomb_png(folder / "d_bomb.png")
    Image.new("1", (3000, 3000), 1).save(folder / "e_big.png")   # 9 MP: over the lowered limit
    make_photo(test_digits[0][0], np.random.default_rng(1)).save(folder / "f_good.jpg")
    (folder / "notes.txt").write_text("not an image extension: skipped in folders")
    missing = tmp_path / "missing.png"

    code, out, err = run_predict(capsys, trained_run / "best.h5", folder, missing,
                                 "--max-pixels", "4000000")
    assert code == 1
    lines = err.splitlines()
    assert lines == [
        f"error: {missing}: no such file or folder",
        f"error: {folder / 'a_text.png'}: not an image",
        f"error: {folder / 'b_zero.png'}: empty image",
        f"error: {folder / 'c_white.png'}: blank image: no ink found",
        f"error: {folder / 'd_bomb.png'}: image too large (decompression bomb)",
        f"error: {folder / 'e_big.png'}: image too large (decompression bomb)",
    ]
    assert out.splitlines()[0].startswith(f"{folder / 'f_good.jpg'}: {test_digits[1][0]}  (")
    assert len(out.splitlines()) == 1


def test_unreadable_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    bogus = tmp_path / "model.h5"
    bogus.write_bytes(b"\0" * 100)
    image = tmp_path / "x.png"
    Image.new("L", (28, 28), 0).save(image)
    code, out, err = run_predict(capsys, bogus, image)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {bogus}: ")
    code, _, err = run_predict(capsys, tmp_path / "nope.h5", image)
    assert code == 2 and len(err.splitlines()) == 1 and "nope.h5" in err


def test_save_preprocessed_and_command_line(trained_run, test_digits, tmp_path):
    """As a user runs it: `python -m launch.predict RUN_DIR files... --save-preprocessed DIR`."""
    rng = np.random.default_rng(3)
    files = []
    for k in range(3):
        path = tmp_path / f"digit{k}.{('png', 'jpg', 'bmp')[k]}"
        make_photo(test_digits[0][k], rng).save(path)
        files.append(path)
    seen = tmp_path / "seen"
    done = subprocess.run([sys.executable, "-m", "launch.predict", str(trained_run),
                           *map(str, files), "--save-preprocessed", str(seen), "--top", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    for path, line, label in zip(files, lines, test_digits[1]):
        assert line.startswith(f"{path}: {label}  (")
        assert line.count(",") == 1                                   # --top 2
        small = Image.open(seen / f"{path.name}.png")
        assert small.size == (28, 28) and small.mode == "L"
        pixels = np.asarray(small)
        assert pixels.max() == 255 and pixels[0].max() == 0           # light ink on black
        assert Image.open(seen / f"{path.name}.x10.png").size == (280, 280)


def test_exif_orientation_transparency_and_16_bit(tmp_path):
    """A phone JPEG stored sideways with an EXIF orientation tag, a drawing on a transparent
    canvas and a 16-bit scan all come out as the same digit as a plain 8-bit PNG."""
    from PIL import ImageDraw
    from launch.images import preprocess_file

    sheet = Image.new("L", (200, 260), 235)
    ImageDraw.Draw(sheet).line([(40, 30), (160, 30), (80, 230)], fill=25, width=18)   # a 7
    sheet.save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90 degrees clockwise to view"
    sheet.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif,
                                                    quality=95)
    clear = Image.new("RGBA", sheet.size, (0, 0, 0, 0))
    ImageDraw.Draw(clear).line([(40, 30), (160, 30), (80, 230)], fill=(0, 0, 0, 255), width=18)
    clear.save(tmp_path / "app.png")
    Image.fromarray(np.asarray(sheet).astype(np.uint16) * 257).save(tmp_path / "scan16.png")

    plain = preprocess_file(tmp_path / "plain.png").astype(int)
    for name in ("phone.jpg", "app.png", "scan16.png"):
        other = preprocess_file(tmp_path / name).astype(int)
        assert np.abs(other - plain).mean() < 4, name


def test_without_a_checkpoint_the_shipped_model_answers(trained_run, test_digits, tmp_path,
                                                        monkeypatch, capsys):
    """launch/models/best/model.h5 (here a copy of a run's best.h5 in $MPIGRAD_MODELS) is used
    when no checkpoint is named, with one line saying so; without it, one line says how to get
    a model, exit 2."""
    import shutil
    image = tmp_path / "digit.png"
    make_photo(test_digits[0][0], np.random.default_rng(5)).save(image)
    models = tmp_path / "models"
    monkeypatch.setenv("MPIGRAD_MODELS", str(models))
    code, out, err = run_predict(capsys, image)
    assert (code, out) == (2, "")
    assert err == f"error: {predict.HOW_TO_GET_A_MODEL}\n"
    assert "mpirun -n 2 python -m dist.train --preset best" in err

    (models / "best").mkdir(parents=True)
    shutil.copy(trained_run / "best.h5", models / "best" / "model.h5")
    shutil.copy(trained_run / "config.json", models / "best" / "config.json")
    code, out, err = run_predict(capsys, image)
    assert code == 0
    assert err == (f"no checkpoint named: using the shipped model "
                   f"{models / 'best' / 'model.h5'}\n")
    _, named, _ = run_predict(capsys, trained_run, image)
    assert out == named and out.startswith(f"{image}: {test_digits[1][0]}  (")
