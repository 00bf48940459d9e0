"""stylepipe resize and load_rgb on every kind of real-world input."""

from __future__ import annotations

import io
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylepipe.cli import main as cli
from stylepipe.data.images import ImageError, alpha_channel, jpeg_frame, load_rgb
from stylepipe.data.resize import list_files, list_members, resize_file, resize_folder
from stylepipe.data.shards import ShardReader

N = 16
RED, BLUE = (220, 20, 20), (20, 20, 220)


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = RED
    arr[:, width // 2 :] = BLUE
    return Image.fromarray(arr)


def _with_orientation(image: Image.Image, path: Path, orientation: int, **save) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG claiming width x height pixels: cheap on disk, a bomb if decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


KEPT = {
    "a_rgb.jpg", "b_gray.png", "c_cmyk.jpg", "d_palette_alpha.png", "e_rgba.png", "f_16bit.png",
    "g_exif6_small.jpg", "h_exif6_big.jpg", "i_exif6.png", "nested/j_gray.jpg", "k_small_upscaled.png",
}
SKIPPED = {
    "s_truncated_small.jpg": "truncated",
    "t_truncated_big.jpg": "truncated",
    "u_corrupt.png": "corrupt",
    "v_zero.jpg": "empty file",
    "w_notes.txt": "not an image",
    "x_bomb.png": "decompression bomb",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raw")
    (d / "nested").mkdir()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    photo.save(d / "a_rgb.jpg", quality=90)
    Image.new("L", (40, 30), 77).save(d / "b_gray.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(d / "c_cmyk.jpg")  # pure red in CMYK
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.paste(1, (0, 0, 20, 30))
    pal.save(d / "d_palette_alpha.png", transparency=0)  # index 0 transparent -> white
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (20, 0, 40, 30))
    rgba.save(d / "e_rgba.png")
    Image.fromarray(np.full((30, 40), 32896, np.uint16)).save(d / "f_16bit.png")  # 32896/257 = 128
    _with_orientation(_halves(60, 40), d / "g_exif6_small.jpg", 6, quality=95)
    _with_orientation(_halves(240, 160), d / "h_exif6_big.jpg", 6, quality=95)  # short side >= 4N: DCT draft
    _with_orientation(_halves(60, 40), d / "i_exif6.png", 6)
    Image.new("L", (40, 30), 200).save(d / "nested" / "j_gray.jpg")
    Image.new("RGB", (8, 6), (10, 200, 10)).save(d / "k_small_upscaled.png")
    small = (d / "a_rgb.jpg").read_bytes()
    (d / "s_truncated_small.jpg").write_bytes(small[: len(small) // 2])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    (d / "t_truncated_big.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    good_png = (d / "b_gray.png").read_bytes()
    (d / "u_corrupt.png").write_bytes(good_png[:40] + b"\xff" * 40 + good_png[80:])
    (d / "v_zero.jpg").write_bytes(b"")
    (d / "w_notes.txt").write_text("not a picture\n")
    _png_header_only(d / "x_bomb.png", 200_000, 200_000)
    (d / ".snakemake_timestamp").write_text("")  # hidden files are not inputs
    return d


@pytest.fixture(scope="module")
def resized(inputs, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("resized")
    resize_folder(inputs, out / "w1", N, workers=1, per_shard=4, progress=False)
    assert cli(["resize", "--input", str(inputs), "--output", str(out / "w2"), "--size", str(N),
                "--workers", "2", "--images-per-shard", "4"]) == 0
    return out / "w1", out / "w2"


def _by_name(reader: ShardReader) -> dict[str, np.ndarray]:
    return {name: reader[i].numpy() for i, name in enumerate(reader.manifest["images"])}


def test_manifest_lists_kept_and_skipped(resized):
    manifest = ShardReader(resized[0]).manifest
    assert manifest["images"] == sorted(KEPT)
    assert {s["file"] for s in manifest["skipped"]} == set(SKIPPED)
    for item in manifest["skipped"]:
        assert SKIPPED[item["file"]] in item["reason"], item
    assert manifest["count"] == len(KEPT) and manifest["skipped_count"] == len(SKIPPED)
    assert manifest["input_count"] == len(KEPT) + len(SKIPPED)
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 3]
    assert manifest["image_size"] == N


def test_byte_identical_whatever_the_worker_count(resized):
    one, two = resized
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    assert names == ["manifest.json", "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_every_mode_becomes_sensible_rgb(resized):
    images = _by_name(ShardReader(resized[0]))
    for name, img in images.items():
        assert img.shape == (3, N, N) and img.dtype == np.uint8, name
    assert np.all(images["b_gray.png"] == 77)
    red = images["c_cmyk.jpg"][:, N // 2, N // 2]
    assert red[0] > 200 and red[1] < 40 and red[2] < 40
    pal = images["d_palette_alpha.png"]  # left: green index, right: transparent -> white
    assert tuple(pal[:, N // 2, 1]) == (0, 200, 0) and tuple(pal[:, N // 2, -2]) == (255, 255, 255)
    rgba = images["e_rgba.png"]
    assert tuple(rgba[:, N // 2, 1]) == (255, 255, 255) and tuple(rgba[:, N // 2, -2]) == (0, 0, 255)
    assert np.all(images["f_16bit.png"] == 128)
    assert np.all(images["nested/j_gray.jpg"][0] == images["nested/j_gray.jpg"][2])
    assert tuple(images["k_small_upscaled.png"][:, 3, 3]) == (10, 200, 10)


@pytest.mark.parametrize("mode, colour, key", [("L", 90, 0), ("RGB", (90, 20, 20), (0, 0, 0))])
def test_a_transparent_colour_in_gray_and_rgb_pngs_becomes_white(tmp_path, mode, colour, key):
    """PNG's tRNS chunk marks one gray level or RGB colour transparent: like an alpha channel, it
    becomes white for training and stylizing, and the stylized output keeps it transparent."""
    image = Image.new(mode, (40, 30), colour)
    image.paste(key, (0, 0, 20, 30))  # left half: the transparent colour
    image.save(tmp_path / "keyed.png", transparency=key)
    rgb = np.asarray(load_rgb(tmp_path / "keyed.png"))
    assert tuple(rgb[15, 5]) == (255, 255, 255)
    assert tuple(rgb[15, 35]) == ((90, 90, 90) if mode == "L" else (90, 20, 20))
    alpha = np.asarray(alpha_channel(Image.open(tmp_path / "keyed.png")))
    assert alpha[15, 5] == 0 and alpha[15, 35] == 255
    resized = tmp_path / "resized"
    resize_folder(tmp_path, resized, size=N, progress=False)
    shard = ShardReader(resized)[0].numpy()
    assert tuple(shard[:, N // 2, 1]) == (255, 255, 255) and tuple(shard[:, N // 2, -2]) == tuple(rgb[15, 35])


@pytest.mark.parametrize("name", ["g_exif6_small.jpg", "h_exif6_big.jpg", "i_exif6.png"])
def test_exif_orientation_by_pixels(resized, name):
    # stored landscape, left red | right blue; orientation 6 = rotate 90° clockwise
    # to display, so the upright portrait is red on top, blue at the bottom
    img = _by_name(ShardReader(resized[0]))[name].astype(int)
    top, bottom = img[:, 1, N // 2], img[:, -2, N // 2]
    assert top[0] > 150 and top[2] < 80, top
    assert bottom[2] > 150 and bottom[0] < 80, bottom


XMP_ORIENTATION_6 = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                     b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
                     b'</rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("width, height", [(60, 40), (240, 160)], ids=["small", "big"])
def test_an_orientation_only_in_xmp_turns_every_jpeg_as_load_rgb_does(tmp_path, width, height):
    """Some editors record the orientation in XMP alone. Pillow applies it; the JPEG decoder that reads
    small JPEGs directly would not, so such files take the Pillow path: small or big, upright."""
    folder = tmp_path / "in"
    folder.mkdir()
    _halves(width, height).save(folder / "xmp6.jpg", quality=95, xmp=XMP_ORIENTATION_6)
    assert load_rgb(folder / "xmp6.jpg").size == (height, width)  # what stylize and evaluate see
    resize_folder(folder, tmp_path / "out", size=N, progress=False)
    img = ShardReader(tmp_path / "out")[0].numpy().astype(int)
    top, bottom = img[:, 1, N // 2], img[:, -2, N // 2]
    assert top[0] > 150 and top[2] < 80, top  # red on top, blue at the bottom: turned
    assert bottom[2] > 150 and bottom[0] < 80, bottom


def test_load_rgb_matches_resize_orientation(inputs):
    image = load_rgb(inputs / "g_exif6_small.jpg")
    assert image.mode == "RGB" and image.size == (40, 60)
    assert image.getpixel((20, 2))[0] > 150 and image.getpixel((20, 57))[2] > 150


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_load_rgb_refuses_bad_files_clearly(inputs, name):
    with pytest.raises(ImageError, match=SKIPPED[name]) as err:
        load_rgb(inputs / name)
    assert name in str(err.value)


def test_max_pixels_knob_refuses_as_bomb(inputs):
    with pytest.raises(ImageError, match="decompression bomb") as err:
        resize_file(inputs / "a_rgb.jpg", N, max_pixels=64 * 47)
    # the limit came from --max-pixels: that is what to raise, not the environment variable
    assert str(err.value).endswith("raise the limit (resize --max-pixels)")
    assert resize_file(inputs / "a_rgb.jpg", N, max_pixels=64 * 48).shape == (3, N, N)


def test_hidden_files_are_not_inputs(inputs):
    assert ".snakemake_timestamp" not in list_files(inputs)


def test_nothing_usable_is_an_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"")
    assert cli(["resize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--size", "8"]) == 2
    assert "a.jpg: empty file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_missing_input_folder_names_the_fix(tmp_path, capsys):
    assert cli(["resize", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--size", "8"]) == 2
    assert "stylepipe fetch content" in capsys.readouterr().err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_an_output_that_is_not_a_previous_resize_is_refused_and_kept(inputs, resized, tmp_path, capsys):
    """The finished folder replaces the output path whole: the user's files there must not go with it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_rgb.jpg").write_bytes((inputs / "a_rgb.jpg").read_bytes())
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "thesis.txt").write_text("years of work\n")
    before = {d: _tree(d) for d in (photos, mydocs)}
    cases = [
        (photos, photos, "would replace the input"),  # in place
        (photos, tmp_path, "would replace the input"),  # a folder above the input
        (photos, mydocs, "not a previous resized set"),
        (photos, photos / "a_rgb.jpg", "is a file"),
    ]
    for source, output, message in cases:
        assert cli(["resize", "--input", str(source), "--output", str(output), "--size", "8"]) == 2, output
        err = capsys.readouterr().err
        assert f"{output}: " in err and message in err, err
    assert {d: _tree(d) for d in (photos, mydocs)} == before
    assert not list(tmp_path.glob(".*part")), "a refused run left a temporary folder"
    # a previous resize output is replaced, and an empty folder is filled
    previous = tmp_path / "previous"
    assert cli(["resize", "--input", str(photos), "--output", str(previous), "--size", "8"]) == 0
    assert cli(["resize", "--input", str(photos), "--output", str(previous), "--size", "4"]) == 0
    assert ShardReader(previous)[0].shape == (3, 4, 4)
    (tmp_path / "empty").mkdir()
    assert cli(["resize", "--input", str(photos), "--output", str(tmp_path / "empty"), "--size", "4"]) == 0


def _sigint_as_in_a_terminal() -> None:
    """In the child: SIGINT's default action, which a command started from a terminal has. A shell without
    job control (a script's `cmd &`) starts its background commands with SIGINT ignored, and a process
    that starts with it ignored keeps ignoring it: so would this test's command, whatever ran the tests."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _resize_many_photos_in_two_workers(tmp_path: Path, count: int = 400):
    """`stylepipe resize --workers 2` of `count` large photos, in its own process group, returned once
    the workers are busy and the temporary output folder exists."""
    import os
    import subprocess
    import time

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(photos / "p000.jpg", quality=90)
    for i in range(1, count):
        os.link(photos / "p000.jpg", photos / f"p{i:04d}.jpg")
    proc = subprocess.Popen(["stylepipe", "resize", "--input", str(photos), "--output", str(tmp_path / "out"),
                             "--size", "64", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.*.part")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def _communicate_or_kill(proc, timeout: float = 120) -> tuple[str, str]:
    """``proc.communicate``; a command that hangs is killed with its workers, not left behind the test."""
    import os
    import signal
    import subprocess

    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


@pytest.mark.parametrize("signum, to_group", [("SIGINT", True), ("SIGTERM", True), ("SIGTERM", False)])
def test_ctrl_c_or_sigterm_ends_with_one_line_and_leaves_nothing(tmp_path, signum, to_group):
    """^C in a terminal reaches the command and its worker processes, as `scancel` or a job's time limit
    sends SIGTERM to all of them, and `kill` to the command alone: one line, status 128 + the signal,
    no traceback from any process, and neither the output nor its temporary folder is left."""
    import os
    import signal

    proc = _resize_many_photos_in_two_workers(tmp_path)
    signum = getattr(signal, signum)
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    _, stderr = _communicate_or_kill(proc)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert ("stylepipe resize: interrupted" if signum == signal.SIGINT else "stylepipe resize: stopped by SIGTERM") \
        in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_a_worker_killed_midway_is_a_clear_error_not_a_wait_forever(tmp_path):
    """The out-of-memory killer ends a worker with SIGKILL, its images unfinished: the command says so
    and stops, writing nothing (a multiprocessing.Pool would wait for those images forever)."""
    import os
    import signal

    proc = _resize_many_photos_in_two_workers(tmp_path, count=2000)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    if not children.is_file():
        proc.kill()
        pytest.skip("needs Linux's /proc/PID/task/TID/children")
    command = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    workers = [int(pid) for pid in children.read_text().split()
               if Path(f"/proc/{pid}/cmdline").read_bytes() == command]  # forked: the command's own line
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = _communicate_or_kill(proc)
    assert proc.returncode == 2, stderr[-3000:]
    assert "a worker process ended before its images were done" in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_a_full_disk_names_the_output_and_keeps_the_previous_one(inputs, resized, tmp_path):
    """The shards are written through file descriptors: a full disk's error names no file. The command
    names its output instead, and the previous resized set stays whole under that name."""
    import shutil
    import subprocess

    from conftest import file_size_limit

    out = tmp_path / "out"
    shutil.copytree(resized[0], out)
    before = _tree(out)
    one_image = 3 * N * N
    result = subprocess.run(["stylepipe", "resize", "--input", str(inputs), "--output", str(out), "--size", str(N),
                             "--images-per-shard", "1000"], capture_output=True, text=True, timeout=120,
                            preexec_fn=file_size_limit(2 * one_image + 200))  # the first shard's 3rd image fails
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"stylepipe resize: error: {out}: File too large (the output was not written)"), result.stderr[-3000:]
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture(scope="module")
def zipped(inputs, tmp_path_factory) -> Path:
    """The same files as ``inputs`` in a zip, in scrambled order, with the folder
    entries, hidden files and macOS resource forks real zips carry."""
    path = tmp_path_factory.mktemp("zip") / "content.zip"
    files = [f for f in inputs.rglob("*") if f.is_file()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("nested/", b"")
        for f in sorted(files, reverse=True):
            zf.write(f, f.relative_to(inputs).as_posix())
        zf.writestr("__MACOSX/._a_rgb.jpg", b"resource fork")
        zf.writestr("nested/.DS_Store", b"finder")
    return path


def test_zip_lists_files_only(zipped):
    members = list_members(zipped)
    assert members == sorted(KEPT | set(SKIPPED))


def test_zip_input_gives_the_same_shards_as_the_folder(resized, zipped, tmp_path):
    out = tmp_path / "z2"
    assert cli(["resize", "--input", str(zipped), "--output", str(out), "--size", str(N),
                "--workers", "2", "--images-per-shard", "4"]) == 0
    manifest = ShardReader(out).manifest
    assert {s["file"] for s in manifest["skipped"]} == set(SKIPPED)  # bad images inside the zip: skipped, listed
    for item in manifest["skipped"]:
        assert SKIPPED[item["file"]] in item["reason"], item
    names = sorted(p.name for p in resized[0].iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (resized[0] / name).read_bytes() == (out / name).read_bytes(), name
    one = resize_folder(zipped, tmp_path / "z1", N, workers=1, per_shard=4, progress=False)
    assert one == manifest


def _patched_zip(path: Path, members: dict[str, bytes], field: str, value: int, names: set[str]) -> None:
    """A zip whose members ``names`` have their ``field`` (flags: bit 0 = encrypted; method) set to ``value``,
    in the local header and the central directory, as zips made by other programs carry them."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        central = raw.find(b"PK\x01\x02")
        for name in names:
            local = infos[name].header_offset
            struct.pack_into("<H", raw, local + {"flags": 6, "method": 8}[field], value)
            entry = raw.find(b"PK\x01\x02", central)
            while raw[entry + 46:entry + 46 + len(name)] != name.encode():
                entry = raw.find(b"PK\x01\x02", entry + 4)
            struct.pack_into("<H", raw, entry + {"flags": 8, "method": 10}[field], value)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("field, value, reason", [("flags", 1, "is encrypted"), ("method", 9, "not supported")])
def test_a_zip_member_zipfile_cannot_read_is_skipped_and_listed(inputs, tmp_path, field, value, reason):
    """An encrypted member, or one compressed with a method zipfile lacks (Deflate64 from Windows' zip)."""
    good = (inputs / "a_rgb.jpg").read_bytes()
    _patched_zip(tmp_path / "c.zip", {"a.jpg": good, "b.jpg": good}, field, value, {"b.jpg"})
    manifest = resize_folder(tmp_path / "c.zip", tmp_path / "out", 8, progress=False)
    assert manifest["images"] == ["a.jpg"]
    [skipped] = manifest["skipped"]
    assert skipped["file"] == "b.jpg" and skipped["reason"].startswith("unreadable zip member") \
        and reason in skipped["reason"], skipped


def test_an_output_inside_the_input_folder_is_no_input_of_the_next_run(inputs, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(inputs, photos)
    first = resize_folder(photos, photos / "out" / "resized", 8, progress=False)
    assert resize_folder(photos, photos / "out" / "resized", 8, progress=False) == first


def test_the_params_give_size_and_workers_and_are_validated_before_any_work(inputs, tmp_path, capsys):
    """As the pipeline runs it (--params): the size is train.image_size, and a value training would refuse
    stops the command at once, not after hours of resizing (DVC runs this step without any other check)."""
    import yaml

    from conftest import tiny_params_dict

    params = tiny_params_dict()
    params["train"]["image_size"] = 8
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    assert cli(["resize", "--params", str(tmp_path / "p.yaml"), "--input", str(inputs), "--output", str(out)]) == 2
    assert "key train.image_size: 8 is less than the minimum of 16" in capsys.readouterr().err
    assert not out.exists()
    params["train"]["image_size"] = 16
    params["resources"]["resize"]["cpus_per_task"] = 64  # more than this machine has: as many as it has
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    assert cli(["resize", "--params", str(tmp_path / "p.yaml"), "--input", str(inputs), "--output", str(out)]) == 0
    assert ShardReader(out).image_size == 16
    assert cli(["resize", "--params", str(tmp_path / "p.yaml"), "--size", "16", "--input", str(inputs),
                "--output", str(out)]) == 2
    assert "give --size or --params, not both" in capsys.readouterr().err
    assert cli(["resize", "--input", str(inputs), "--output", str(out)]) == 2
    assert "give --size N, or --params params.yaml" in capsys.readouterr().err


def test_a_file_that_is_not_a_zip_is_a_clear_error(inputs, tmp_path, capsys):
    assert cli(["resize", "--input", str(inputs / "a_rgb.jpg"), "--output", str(tmp_path / "o"), "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert "a_rgb.jpg: not a zip file" in err and "folder" in err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    """JPEGs the direct (header parsed without Pillow) path takes, and ones it must leave to Pillow."""
    d = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, 255 - xx * 3], -1) + rng.integers(0, 20, (48, 64, 3))
    photo = Image.fromarray(smooth.clip(0, 255).astype(np.uint8))
    photo.save(d / "plain.jpg", quality=90)
    photo.save(d / "progressive.jpg", quality=90, progressive=True)
    photo.save(d / "restarts.jpg", quality=90, restart_marker_blocks=2)
    photo.convert("L").save(d / "gray.jpg", quality=90)
    _with_orientation(photo, d / "exif6.jpg", 6, quality=90)
    _with_orientation(photo.resize((48, 64)), d / "exif8_portrait.jpg", 8, quality=90)
    photo.convert("CMYK").save(d / "cmyk.jpg")
    photo.save(d / "mpo.jpg", "MPO", save_all=True, append_images=[photo.rotate(90)])  # two pictures, one file
    plain = (d / "plain.jpg").read_bytes()
    dqt = plain.index(b"\xff\xdb")
    (d / "bad_dqt.jpg").write_bytes(plain[: dqt + 3] + bytes((plain[dqt + 3] - 1,)) + plain[dqt + 4 :])
    (d / "header_cut.jpg").write_bytes(plain[: plain.index(b"\xff\xc4")])
    return d


DIRECT = ["plain.jpg", "progressive.jpg", "restarts.jpg", "gray.jpg", "exif6.jpg", "exif8_portrait.jpg"]


def test_jpeg_frame_reads_plain_headers_only(jpegs, inputs):
    assert jpeg_frame((jpegs / "plain.jpg").read_bytes()) == (64, 48, 3)
    assert jpeg_frame((jpegs / "gray.jpg").read_bytes()) == (64, 48, 1)
    assert jpeg_frame((jpegs / "exif8_portrait.jpg").read_bytes()) == (48, 64, 3)  # as stored
    for name in ["cmyk.jpg", "mpo.jpg", "bad_dqt.jpg", "header_cut.jpg"]:
        assert jpeg_frame((jpegs / name).read_bytes()) is None, name
    for name in ["b_gray.png", "v_zero.jpg", "w_notes.txt"]:
        assert jpeg_frame((inputs / name).read_bytes()) is None, name


@pytest.mark.parametrize("name", DIRECT)
def test_direct_jpeg_path_gives_the_pillow_opened_result(jpegs, name, monkeypatch):
    from stylepipe.data import resize

    assert resize._direct_jpeg(jpegs / name, N, None, None) is not None
    direct = resize_file(jpegs / name, N)
    monkeypatch.setattr(resize, "_direct_jpeg", lambda *args: None)  # Pillow opens, the same decoder decodes
    assert np.array_equal(direct, resize_file(jpegs / name, N))
    monkeypatch.setattr(resize, "_jpeg_decoder", lambda: None)  # Pillow decodes, rotates and converts
    pillow = resize_file(jpegs / name, N)
    assert np.abs(direct.astype(int) - pillow.astype(int)).mean() < 2, name


@pytest.mark.parametrize("name", ["cmyk.jpg", "mpo.jpg", "bad_dqt.jpg", "header_cut.jpg"])
def test_jpegs_the_direct_path_declines_still_behave(jpegs, name):
    data = (jpegs / name).read_bytes()
    if name in ("bad_dqt.jpg", "header_cut.jpg"):
        with pytest.raises(ImageError, match="corrupt|truncated"):
            resize_file(jpegs / name, N)
    else:
        assert resize_file(jpegs / name, N).shape == (3, N, N)
        assert np.array_equal(resize_file(jpegs / name, N), resize_file(name, N, data=data))


def test_direct_jpeg_path_keeps_the_pixel_limit(jpegs):
    with pytest.raises(ImageError, match="decompression bomb"):
        resize_file(jpegs / "plain.jpg", N, max_pixels=64 * 48 - 1)
    data = (jpegs / "plain.jpg").read_bytes()
    with pytest.raises(ImageError, match="decompression bomb"):
        resize_file("plain.jpg", N, max_pixels=64 * 48 - 1, data=data)
    assert np.array_equal(resize_file("plain.jpg", N, data=data), resize_file(jpegs / "plain.jpg", N))
