"""`stylepipe stylize`: sizes, batching by size, .pth and .onnx models, preserve colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stylepipe import cli
from stylepipe.export import export_onnx
from stylepipe.models.transformer import TransformerNet
from stylepipe.stylize import expand_inputs, preserve_color, stylize_files, target_size


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
                     "--device", "cpu", "--engine", "torch", str(images)]) == 0
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
    a = stylize_files(pth, [images / "a.png"], tmp_path / "t", engine="torch", device="cpu", progress=False)
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


def test_preserve_color_keeps_content_chroma():
    import skimage.data

    content = Image.fromarray(skimage.data.astronaut()[:64, 200:264])
    stylized = Image.fromarray(skimage.data.chelsea()[100:164, 100:164])
    mixed = preserve_color(stylized, content).convert("YCbCr")
    y, cb, cr = (np.asarray(c, dtype=np.float32) for c in mixed.split())
    _, ccb, ccr = (np.asarray(c, dtype=np.float32) for c in content.convert("YCbCr").split())
    sy = np.asarray(stylized.convert("YCbCr").split()[0], dtype=np.float32)
    # equal up to the rounding and gamut clipping of the RGB round trip
    assert np.abs(y - sy).mean() < 1.5 and np.abs(cb - ccb).mean() < 1.5 and np.abs(cr - ccr).mean() < 1.5
    assert np.abs(cb - np.asarray(stylized.convert("YCbCr").split()[1], dtype=np.float32)).mean() > 5
