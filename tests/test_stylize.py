"""`stylepipe stylize`: sizes, batching by size, .pth and .onnx models, precision, preserve colour."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylepipe import cli
from stylepipe.export import export_onnx
from stylepipe.models.transformer import TransformerNet
from stylepipe.stylize import runners, stylize_files
from stylepipe.stylize.colour import preserve_color
from stylepipe.stylize.inputs import expand_inputs, target_size
from stylepipe.stylize.runners import load_runner, resolve_precision

FP32 = ["--device", "cpu", "--engine", "torch", "--precision", "fp32"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = TransformerNet().eval()
    torch.save(net.state_dict(), root / "style.pth")
    export_onnx(net, root / "style.onnx")
    return net, root / "style.pth", root / "style.onnx"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sizes = {"a.png": (37, 53), "b.jpg": (21, 30), "c.png": (37, 53), "d.png": (64, 48)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def test_outputs_keep_sizes_across_mixed_batches(models, images, tmp_path):
    net, pth, _ = models
    out = tmp_path / "out"
    assert cli.main(["stylize", "--model", str(pth), "--output", str(out), "--batch-size", "2",
                     "--device", "cpu", "--engine", "torch", "--precision", "fp32", str(images)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a.png", "b.png", "c.png", "d.png"]
    for name in written:
        src = next(images.glob(name.replace(".png", ".*")))
        assert Image.open(out / name).size == Image.open(src).size
    # the batched result equals the network applied to the image alone
    x = torch.from_numpy(np.asarray(Image.open(images / "b.jpg"), dtype=np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = net(x).clamp(0, 255).round()[0].permute(1, 2, 0).numpy()
    got = np.asarray(Image.open(out / "b.png"), dtype=np.float32)
    assert np.abs(got - expected).max() <= 1


def test_pth_and_onnx_agree(models, images, tmp_path):
    _, pth, onnx = models
    a = stylize_files(pth, [images / "a.png"], tmp_path / "t", engine="torch", precision="fp32", device="cpu",
                      progress=False)
    b = stylize_files(onnx, [images / "a.png"], tmp_path / "o", device="cpu", progress=False)
    c = stylize_files(pth, [images / "a.png"], tmp_path / "r", engine="onnxruntime", device="cpu", progress=False)
    arrays = [np.asarray(Image.open(p[0]), dtype=np.int16) for p in (a, b, c)]
    assert np.abs(arrays[0] - arrays[1]).max() <= 1 and np.abs(arrays[0] - arrays[2]).max() <= 1


def test_single_file_output_max_size_and_scale(models, images, tmp_path):
    _, _, onnx = models
    out = tmp_path / "one.png"
    assert cli.main(["stylize", "--model", str(onnx), "--output", str(out), "--max-size", "32",
                     str(images / "d.png")]) == 0
    assert Image.open(out).size == (24, 32)  # d.png is 48 wide, 64 high
    assert target_size((64, 48), max_size=32, scale=0.5) == (16, 12)
    assert target_size((64, 48), max_size=100) == (64, 48)


def test_globs_and_errors(images):
    assert [p.name for p in expand_inputs([str(images / "*.png")])] == ["a.png", "c.png", "d.png"]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_inputs([str(images / "nothing-here*.png")])


def test_inputs_once_each_an_empty_one_refused_and_non_images_named(images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(images)
    # one file, named relatively and absolutely: stylized once (two outputs of one name would be refused)
    assert expand_inputs(["a.png", str(images / "a.png"), "*.png"]) == [Path("a.png"), Path("c.png"), Path("d.png")]
    # two names of one file (a link; DVC links its cache's files so): two inputs, two outputs
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "b.png").symlink_to(images / "a.png")
    assert expand_inputs(["a.png", tmp_path / "linked" / "b.png"]) == [Path("a.png"), tmp_path / "linked" / "b.png"]
    # Path("") is "."; an unset shell variable must not stylize the working directory
    with pytest.raises(ValueError, match="an input is empty"):
        expand_inputs([""])
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.heic").write_bytes(b"")
    (folder / "notes").write_bytes(b"")
    capsys.readouterr()
    assert expand_inputs([folder, folder / "*"]) == [folder / "a.jpg"]
    err = capsys.readouterr().err
    assert "left out 2 file(s) that are not images by their suffix" in err
    assert str(folder / "b.heic") in err and str(folder / "notes") in err


def test_preserve_color_keeps_content_chroma():
    import skimage.color
    import skimage.data

    content = Image.fromarray(skimage.data.astronaut()[:64, 200:264])
    stylized = Image.fromarray(skimage.data.chelsea()[100:164, 100:164])
    mixed = np.asarray(preserve_color(stylized, content), dtype=np.float64)
    # independently: scikit-image's (studio-range BT.601) YCbCr, the stylized Y with the content's Cb and Cr
    y = skimage.color.rgb2ycbcr(np.asarray(stylized))[..., :1]
    cbcr = skimage.color.rgb2ycbcr(np.asarray(content))[..., 1:]
    expected = np.clip(skimage.color.ycbcr2rgb(np.concatenate([y, cbcr], axis=-1)), 0, 1) * 255
    assert np.abs(mixed - expected).max() <= 0.51  # rounding to 8 bits only
    assert np.abs(mixed - np.asarray(stylized)).mean() > 5  # the colours really changed


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory):
    """A seeded network whose output spans about 0-255 on a photograph, as a trained one's does, and the photo.

    A random network's output barely leaves 0, which would hide any precision or layout error.
    """
    import skimage.data

    root = tmp_path_factory.mktemp("photo")
    crop = skimage.data.astronaut()[30:128, 150:280]  # 98 x 130: not multiples of 4, so padding runs too
    Image.fromarray(crop).save(root / "astronaut.png")
    torch.manual_seed(1)
    net = TransformerNet().eval()
    with torch.no_grad():
        y = net(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float())
        scale = 50 / y.std()
        net.deconv3.conv2d.weight.mul_(scale)
        net.deconv3.conv2d.bias.mul_(scale).add_(127.5 - scale * y.mean())
    torch.save(net.state_dict(), root / "style.pth")
    return root / "style.pth", root / "astronaut.png"


def test_bf16_output_close_to_fp32(photo_model, tmp_path):
    pth, photo = photo_model
    kwargs = dict(device="cpu", engine="torch", progress=False)
    fp32 = stylize_files(pth, [photo], tmp_path / "fp32", precision="fp32", **kwargs)[0]
    bf16 = stylize_files(pth, [photo], tmp_path / "bf16", precision="bf16", **kwargs)[0]
    a, b = (np.asarray(Image.open(p), dtype=np.float32) for p in (fp32, bf16))
    assert a.shape == b.shape == (98, 130, 3)
    assert 40 < a.std()  # the output really spans the range
    # bf16 keeps 8 significant bits: about one level of 255 on average (measured 0.9), a few at most
    diff = np.abs(a - b)
    assert diff.mean() < 2 and np.percentile(diff, 99) <= 8
    # what a wrong colour order or layout would give
    assert np.abs(a - b[..., ::-1]).mean() > 10 and np.abs(a - b.reshape(3, 98, 130).transpose(1, 2, 0)).mean() > 10


def test_precision_auto(monkeypatch, photo_model):
    pth, _ = photo_model
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runners, "native_bf16_cpu", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("auto", cpu, engine="onnxruntime") == "fp32"
    assert resolve_precision("auto", cpu, onnx_model=True) == "fp32"
    assert resolve_precision("auto", cuda) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cuda) == "bf16"
    runner = load_runner(pth, "cpu")
    assert (runner.engine, runner.precision) == ("torch", "bf16")
    assert (load_runner(pth, "cpu", precision="fp32").engine, load_runner(pth, "cpu", engine="onnxruntime").precision) \
        == ("onnxruntime", "fp32")
    monkeypatch.setattr(runners, "native_bf16_cpu", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    runner = load_runner(pth, "cpu")
    assert (runner.engine, runner.precision) == ("onnxruntime", "fp32")
    with pytest.raises(ValueError, match="fp64"):
        resolve_precision("fp64", cpu)


def test_native_bf16_check_without_the_private_helpers(monkeypatch):
    from stylepipe.cpu import native_bf16_cpu

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert native_bf16_cpu() is False

    def broken():
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bf16_cpu() is True


def test_bf16_errors_name_the_model_and_flag(models, images, tmp_path, capsys):
    _, pth, onnx = models
    with pytest.raises(ValueError, match=r"style\.onnx.*\.pth.*--precision fp32"):
        load_runner(onnx, "cpu", precision="bf16")
    with pytest.raises(ValueError, match="--engine onnxruntime.*--engine torch"):
        load_runner(pth, "cpu", engine="onnxruntime", precision="bf16")
    assert cli.main(["stylize", "--model", str(onnx), "--precision", "bf16", "--output", str(tmp_path),
                     str(images / "a.png")]) == 2
    assert capsys.readouterr().err.startswith(f"stylepipe stylize: error: {onnx}: an ONNX model runs in float32")


def test_cli_says_what_runs(models, images, tmp_path, capsys):
    _, pth, _ = models
    assert cli.main(["stylize", "--model", str(pth), "--device", "cpu", "--precision", "bf16",
                     "--output", str(tmp_path / "o.png"), str(images / "a.png")]) == 0
    captured = capsys.readouterr()
    assert "torch bf16 on cpu" in captured.err and "torch bf16 on cpu" in captured.out


@pytest.mark.parametrize("flag,value", [("--max-size", "0"), ("--max-size", "-5"), ("--scale", "0"), ("--scale", "-1"),
                                        ("--scale", "nan"), ("--batch-size", "0")])
def test_non_positive_sizes_are_refused(models, images, tmp_path, capsys, flag, value):
    _, pth, _ = models
    with pytest.raises(SystemExit) as info:
        cli.main(["stylize", "--model", str(pth), "--output", str(tmp_path / "o.png"), flag, value,
                  str(images / "a.png")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and "positive" in err
    assert not (tmp_path / "o.png").exists()


def test_output_extension_names_the_format(models, images, tmp_path):
    _, pth, _ = models
    kwargs = dict(device="cpu", engine="torch", precision="fp32", progress=False)
    for name, fmt in [("o.jpg", "JPEG"), ("o.JPEG", "JPEG"), ("o.png", "PNG"), ("o.webp", "WEBP"), ("o.tif", "TIFF")]:
        (path,) = stylize_files(pth, [images / "a.png"], tmp_path / name, **kwargs)
        with Image.open(path) as written:
            assert (path.name, written.format, written.mode, written.size) == (name, fmt, "RGB", (53, 37))
    # JPEG at high quality: close to the PNG
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=np.float32) for n in ("o.jpg", "o.png"))
    assert np.abs(a - b).mean() < 2


def test_ambiguous_or_destructive_outputs_are_refused_before_any_work(models, images, tmp_path, capsys):
    _, pth, _ = models
    photo = tmp_path / "photo.png"
    photo.write_bytes((images / "a.png").read_bytes())
    (tmp_path / "A.png").write_bytes(photo.read_bytes())  # one file with a.png on a case-insensitive file system
    cases = {
        "names an image file, but 2 images": ["--output", tmp_path / "result.png", images / "a.png", images / "b.jpg"],
        "cannot write .gif": ["--output", tmp_path / "o.gif", images / "a.png"],
        # a format Pillow does not know at all: refused too, not taken for a folder of that name
        "cannot write .heic": ["--output", tmp_path / "o.heic", images / "a.png"],
        "would replace it": ["--output", tmp_path, photo],
        "would replace it ": ["--output", photo, photo],
        "would both be written to": ["--output", tmp_path / "out", images / "a.png", tmp_path / "A.png"],
    }
    for expected, args in cases.items():
        assert cli.main(["stylize", "--model", str(pth), *map(str, args)]) == 2
        assert expected.strip() in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.png", "photo.png"]
    assert photo.read_bytes() == (images / "a.png").read_bytes()


def test_an_output_larger_than_its_format_can_store_is_refused_before_stylizing(models, tmp_path, capsys):
    _, pth, _ = models
    Image.new("RGB", (17000, 2), (90, 90, 90)).save(tmp_path / "wide.png")
    assert cli.main(["stylize", "--model", str(pth), "--output", str(tmp_path / "o.webp"), *FP32,
                     str(tmp_path / "wide.png")]) == 2
    assert "o.webp: 17000x2 pixels, but WEBP stores at most 16383 a side" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.png"]


@pytest.mark.parametrize("output", ["notes.txt", "notes.txt/out"])
def test_an_output_folder_that_is_a_file_names_the_file(models, images, tmp_path, capsys, output):
    _, pth, _ = models
    (tmp_path / "notes.txt").write_text("mine\n")
    assert cli.main(["stylize", "--model", str(pth), "--output", str(tmp_path / output), *FP32,
                     str(images / "a.png"), str(images / "c.png")]) == 2
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder; choose another --output" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_onnx_of_another_network_is_refused(tmp_path):
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(tmp_path / "other.onnx"),
                      input_names=["x"], dynamo=False)
    with pytest.raises(ValueError, match=r"other\.onnx: an ONNX model, but not a TransformerNet export"):
        load_runner(tmp_path / "other.onnx", "cpu")


def test_onnx_export_with_a_fixed_image_size_is_refused_at_load(tmp_path):
    """An export without dynamic axes runs only at its own size: say so before any image, not at the first."""
    torch.onnx.export(TransformerNet().eval(), (torch.rand(1, 3, 64, 64) * 255,), str(tmp_path / "fixed.onnx"),
                      input_names=["input"], output_names=["output"], dynamo=False)
    with pytest.raises(ValueError, match=r"fixed\.onnx: exported for 64x64 images only .*stylepipe train --onnx"):
        load_runner(tmp_path / "fixed.onnx", "cpu")


def test_unavailable_mps_is_a_clear_error(models, images, tmp_path, capsys):
    _, pth, _ = models
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    assert cli.main(["stylize", "--model", str(pth), "--device", "mps", "--output", str(tmp_path / "o.png"),
                     str(images / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stylepipe stylize: error: --device mps: no Apple MPS device") and "Traceback" not in err


def test_uppercase_onnx_extension_is_an_onnx_model(models, images, tmp_path):
    _, _, onnx = models
    upper = tmp_path / "STYLE.ONNX"
    upper.write_bytes(onnx.read_bytes())
    assert load_runner(upper, "cpu").engine == "onnxruntime"
    (path,) = stylize_files(upper, [images / "a.png"], tmp_path / "o.png", device="cpu", progress=False)
    assert Image.open(path).size == (53, 37)


def test_a_folder_s_hidden_files_are_left_out(models, images, tmp_path):
    _, pth, _ = models
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes((images / "a.png").read_bytes())
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # macOS AppleDouble metadata
    assert expand_inputs([folder]) == [folder / "a.png"]
    assert cli.main(["stylize", "--model", str(pth), "--output", str(tmp_path / "out"), *FP32, str(folder)]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


@functools.cache
def _profile(color_space: bytes = b"RGB ") -> bytes:
    """A real sRGB ICC profile, or the same with another data colour space in its header."""
    from PIL import ImageCms

    data = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # dated: made once
    return data[:16] + color_space + data[20:]


def test_outputs_keep_the_input_s_rgb_colour_profile(models, images, tmp_path):
    # a phone's Display P3 photograph shown without its profile looks duller: outputs carry it on
    _, pth, _ = models
    photo = Image.open(images / "a.png").convert("RGB")
    photo.save(tmp_path / "p3.jpg", icc_profile=_profile(), quality=95)
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg", icc_profile=_profile(b"CMYK"))
    runner = load_runner(pth, "cpu", engine="torch", precision="fp32")
    for name in ("o.png", "o.jpg", "o.webp", "o.tif"):
        (path,) = stylize_files(runner, [tmp_path / "p3.jpg"], tmp_path / name, progress=False)
        assert Image.open(path).info.get("icc_profile") == _profile(), name
    (path,) = stylize_files(runner, [tmp_path / "p3.jpg"], tmp_path / "o.bmp", progress=False)  # BMP holds none
    # a CMYK profile does not describe the RGB the CMYK values convert to: dropped
    (path,) = stylize_files(runner, [tmp_path / "cmyk.jpg"], tmp_path / "cmyk.png", progress=False)
    assert "icc_profile" not in Image.open(path).info
    from stylepipe.data.images import load_rgb

    assert load_rgb(tmp_path / "p3.jpg").info["icc_profile"] == _profile()
    assert "icc_profile" not in load_rgb(tmp_path / "cmyk.jpg").info


def test_outputs_keep_the_input_s_transparency(models, images, tmp_path):
    _, pth, _ = models
    rgba = np.asarray(Image.open(images / "d.png").convert("RGBA")).copy()  # 48 wide, 64 high
    rgba[:, :24, 3] = 0  # left half transparent
    rgba[:, 24:30, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    on_white = np.asarray(Image.open(tmp_path / "cutout.png").convert("RGBA"), dtype=np.float32)
    alpha = on_white[..., 3:] / 255
    composited = np.rint(on_white[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    Image.fromarray(composited).save(tmp_path / "white.png")
    palette = Image.open(images / "d.png").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    palette.save(tmp_path / "gif.png", transparency=palette.getpixel((0, 0)))
    out = tmp_path / "out"
    assert cli.main(["stylize", "--model", str(pth), "--output", str(out), *FP32, str(tmp_path / "cutout.png"),
                     str(tmp_path / "white.png"), str(tmp_path / "gif.png")]) == 0
    cutout, white = Image.open(out / "cutout.png"), Image.open(out / "white.png")
    assert (cutout.mode, white.mode) == ("RGBA", "RGB")
    assert np.array_equal(np.asarray(cutout)[..., :3], np.asarray(white))  # stylized as seen on white
    assert np.array_equal(np.asarray(cutout)[..., 3], rgba[..., 3])
    assert Image.open(out / "gif.png").mode == "RGBA"
    # resized with the image; a JPEG has no transparency: the stylization on white
    runner = load_runner(pth, "cpu", engine="torch", precision="fp32")
    (small,) = stylize_files(runner, [tmp_path / "cutout.png"], tmp_path / "small.webp", max_size=32, progress=False)
    small = Image.open(small)
    assert small.size == (24, 32) and small.mode == "RGBA"
    assert np.asarray(small)[:, :10, 3].max() == 0 and np.asarray(small)[:, 16:, 3].min() == 255
    (jpeg,) = stylize_files(runner, [tmp_path / "cutout.png"], tmp_path / "o.jpg", progress=False)
    assert Image.open(jpeg).mode == "RGB"


def test_onnxruntime_says_where_it_really_runs(models):
    import onnxruntime

    _, pth, onnx = models
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime can run on CUDA")
    # what a GPU machine with the CPU-only onnxruntime package gives for an .onnx model
    runner = load_runner(onnx, torch.device("cuda"))
    assert runner.device == torch.device("cpu")
    assert str(runner) == ("onnxruntime fp32 on cpu "
                           "(this onnxruntime cannot use cuda: pass the .pth model to run on cuda)")
    assert load_runner(pth, torch.device("cuda"), engine="onnxruntime").device == torch.device("cpu")
    assert str(load_runner(onnx, "cpu")) == "onnxruntime fp32 on cpu"


def test_an_image_pillow_cannot_read_is_named_as_such(models, images, tmp_path, capsys):
    import tifffile

    _, pth, _ = models
    rgb = np.asarray(Image.open(images / "a.png"), dtype=np.float32) / 255
    # a valid float32 RGB TIFF, which Pillow does not read
    tifffile.imwrite(tmp_path / "scan.tif", rgb, photometric="rgb")
    assert cli.main(["stylize", "--model", str(pth), "--output", str(tmp_path / "out"), *FP32,
                     str(tmp_path / "scan.tif"), str(images / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "scan.tif: corrupt or unsupported image: starts like a TIFF file but Pillow cannot read it" in err
    assert "convert it to an 8-bit PNG or JPEG" in err


def test_photos_in_formats_not_read_are_named(models, tmp_path):
    # an iPhone's photos are HEIC, which this Pillow does not read
    folder = tmp_path / "iphone"
    folder.mkdir()
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)  # the file's first box
    for name in ("IMG_0001.HEIC", "IMG_0002.HEIC"):
        (folder / name).write_bytes(heic)
    with pytest.raises(FileNotFoundError, match=r"iphone: no images found \(2 file\(s\), of kinds \.heic; images "
                                                r"are read from \.avif, \.bmp, .*: convert the others \(e\.g\. HEIC\)"):
        expand_inputs([folder])
    with pytest.raises(FileNotFoundError, match=r"\*\.HEIC: no images found \(2 file\(s\), of kinds \.heic"):
        expand_inputs([folder / "*.HEIC"])
    with pytest.raises(FileNotFoundError, match="only subfolders; for the images inside them give a glob"):
        expand_inputs([tmp_path])
    from stylepipe.data.images import ImageError, load_rgb

    with pytest.raises(ImageError, match="IMG_0001.HEIC: corrupt or unsupported image: starts like a HEIC file"):
        load_rgb(folder / "IMG_0001.HEIC")


def test_the_pixel_limit_can_be_raised_above_pillow_s(images, tmp_path, monkeypatch):
    # Pillow's own check (warning above MAX_IMAGE_PIXELS) stopped every image above its default of
    # 89.5 M pixels whatever STYLEPIPE_MAX_IMAGE_PIXELS said; here at a small scale: d.png has 3,072 pixels
    from stylepipe.data.images import ImageError, load_rgb

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("STYLEPIPE_MAX_IMAGE_PIXELS", "5000")
    assert load_rgb(images / "d.png").size == (48, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's setting is left as it was
    monkeypatch.setenv("STYLEPIPE_MAX_IMAGE_PIXELS", "3000")
    with pytest.raises(ImageError, match=r"48x64 = 3,072 pixels > limit 3,000; if you trust the file, raise the "
                                         r"limit with STYLEPIPE_MAX_IMAGE_PIXELS="):
        load_rgb(images / "d.png")
    monkeypatch.setenv("STYLEPIPE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="STYLEPIPE_MAX_IMAGE_PIXELS='lots': give a whole number"):
        load_rgb(images / "d.png")


@pytest.mark.parametrize("orientation, fmt", [(1, "JPEG"), (6, "JPEG"), (1, "MPO")])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_for_max_size(models, tmp_path, orientation, fmt):
    """A photo far larger than --max-size is decoded in the DCT domain at >= 2x the target, not at full size."""
    from stylepipe.data.images import load_rgb_and_alpha

    # a smooth picture (as photos are) whose left half is dark: the orientation is visible in the pixels
    h, w = 1200, 1600
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, 128 + 0 * xx], axis=-1).astype(np.uint8)
    rgb[:, : w // 2] //= 4
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    photo = Image.fromarray(rgb)  # MPO: a phone's multi-picture JPEG (here with a thumbnail frame)
    frames = {"save_all": True, "append_images": [photo.resize((160, 120))]} if fmt == "MPO" else {}
    photo.save(path, format=fmt, quality=95, exif=exif, **frames)
    upright_size = (w, h) if orientation == 1 else (h, w)
    size = target_size(upright_size, max_size=160)

    drafted, _ = load_rgb_and_alpha(path, for_size=size)
    full, _ = load_rgb_and_alpha(path)
    assert full.size == upright_size
    # 1/4 scale: the largest reduction that keeps both sides at least twice the target
    assert drafted.size == (upright_size[0] // 4, upright_size[1] // 4)
    assert min(a >= 2 * b for a, b in zip(drafted.size, size))
    a = np.asarray(drafted.resize(size, Image.Resampling.LANCZOS), dtype=np.int16)
    b = np.asarray(full.resize(size, Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.abs(a - b).mean() < 1.0  # the same picture at the target size

    out = tmp_path / "out.png"
    assert cli.main(["stylize", "--model", str(models[1]), "--output", str(out), "--max-size", "160",
                     *FP32, str(path)]) == 0
    assert Image.open(out).size == size



def _png_with_exif_after_the_pixels(image: Image.Image, path, orientation: int) -> None:
    """A PNG whose eXIf chunk comes after IDAT, as some writers put it (Pillow puts it before)."""
    import struct
    import zlib

    image.save(path)
    data = path.read_bytes()
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])


def test_input_sizes_come_from_the_header_and_honour_an_orientation_anywhere(tmp_path, monkeypatch):
    """Batches are grouped by size before any image is decoded: a PNG is not decoded for it (Pillow's
    getexif() would, to look for EXIF after the pixels), and EXIF there still turns the size."""
    from PIL import ImageFile

    from stylepipe.stylize.inputs import oriented_size

    plain = Image.new("RGB", (60, 40), (200, 30, 30))
    plain.save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    plain.save(tmp_path / "before.png", exif=exif)
    _png_with_exif_after_the_pixels(plain, tmp_path / "after.png", 6)
    assert Image.open(tmp_path / "after.png").getexif()[0x0112] == 6  # Pillow finds it there too

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.filename) or real_load(self))
    assert oriented_size(tmp_path / "plain.png") == (60, 40)
    assert oriented_size(tmp_path / "before.png") == (40, 60)
    assert decoded == []
    assert oriented_size(tmp_path / "after.png") == (40, 60)  # found by decoding, as before


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_the_size_from_the_header_is_the_upright_images(tmp_path, suffix, orientation):
    """Pillow's TIFF reader turns a TIFF as it opens it (its size is already upright); the others do not."""
    from stylepipe.data.images import load_rgb_and_alpha
    from stylepipe.stylize.inputs import oriented_size

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned{suffix}"
    Image.new("RGB", (60, 40), (200, 30, 30)).save(path, exif=exif)
    rgb, _ = load_rgb_and_alpha(path)
    assert oriented_size(path) == rgb.size == ((60, 40) if orientation == 3 else (40, 60))
