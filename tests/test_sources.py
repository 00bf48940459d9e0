"""stylepipe fetch: every offline source kind, into a temporary folder."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from stylepipe.cli import main as cli
from stylepipe.data.download import cache_path
from stylepipe.data.resize import resize_folder

from conftest import tiny_params_dict


def _params(tmp_path: Path, **data) -> Path:
    params = tiny_params_dict()
    params["data"].update(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _fetch(*args: str) -> int:
    return cli(["fetch", *args])


def test_content_skimage_eval_and_generated_styles(tiny_params_file, tmp_path):
    p = str(tiny_params_file)
    dl = ["--downloads", str(tmp_path / "dl")]
    content = tmp_path / "content.zip"
    assert _fetch("content", "--params", p, "--output", str(content), *dl) == 0
    names = yaml.safe_load(tiny_params_file.read_text())["data"]["content"]["skimage"]
    with zipfile.ZipFile(content) as zf:
        infos = zf.infolist()
    assert sorted(Path(i.filename).stem for i in infos) == sorted(names)
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {(i.compress_type, i.date_time) for i in infos} == {(zipfile.ZIP_STORED, (1980, 1, 1, 0, 0, 0))}
    # a second fetch gives the same bytes: DVC sees an unchanged output
    assert _fetch("content", "--params", p, "--output", str(tmp_path / "again.zip"), *dl) == 0
    assert (tmp_path / "again.zip").read_bytes() == content.read_bytes()

    assert _fetch("eval", "--params", p, "--output", str(tmp_path / "eval"), *dl) == 0
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        with Image.open(tmp_path / "eval" / f"{name}.png") as im:
            assert im.format == "PNG" and im.mode == "RGB"

    for style in ("waves", "mosaic"):
        out = tmp_path / "styles" / f"{style}.png"
        assert _fetch("style", "--params", p, "--style", style, "--output", str(out), *dl) == 0
        with Image.open(out) as im:
            assert im.mode == "RGB" and im.size == (512, 512)
    assert (tmp_path / "styles" / "waves.png").read_bytes() != (tmp_path / "styles" / "mosaic.png").read_bytes()
    assert not (tmp_path / "dl").exists()  # nothing was downloaded

    # what resize finds in the fetched content
    manifest = resize_folder(content, tmp_path / "resized", 16, progress=False)
    assert manifest["count"] == len(names) and manifest["skipped"] == []


def test_eval_output_holding_other_files_is_refused_and_kept(tiny_params_file, tmp_path, capsys):
    mine, pngs = tmp_path / "mine", tmp_path / "my pngs"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    pngs.mkdir()  # someone's PNG photographs look like an evaluation set, but are not one
    Image.new("RGB", (8, 8), (1, 2, 3)).save(pngs / "holiday.png")
    (tmp_path / "afile.png").write_bytes(b"not ours")
    for output, message in ((mine, "not a previous evaluation set"), (pngs, "not a previous evaluation set"),
                            (tmp_path / "afile.png", "is a file")):
        assert _fetch("eval", "--params", str(tiny_params_file), "--output", str(output)) == 2
        err = capsys.readouterr().err
        assert f"{output}: " in err and message in err, err
    assert (mine / "notes.txt").read_text() == "keep me\n" and [f.name for f in mine.iterdir()] == ["notes.txt"]
    assert [f.name for f in pngs.iterdir()] == ["holiday.png"]
    assert (tmp_path / "afile.png").read_bytes() == b"not ours"
    # its own previous output (PNGs only) is replaced
    assert _fetch("eval", "--params", str(tiny_params_file), "--output", str(tmp_path / "eval")) == 0
    (tmp_path / "eval" / "stale.png").write_bytes((tmp_path / "eval" / "rocket.png").read_bytes())
    assert _fetch("eval", "--params", str(tiny_params_file), "--output", str(tmp_path / "eval")) == 0
    assert not (tmp_path / "eval" / "stale.png").exists()


def test_loss_network_random_has_torchvision_keys(tiny_params_file, tmp_path):
    out = tmp_path / "models" / "vgg16_features.pth"
    assert _fetch("loss-network", "--params", str(tiny_params_file), "--output", str(out)) == 0
    state = torch.load(out, weights_only=True)
    assert sorted({int(k.split(".")[1]) for k in state}) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]
    assert all(k.startswith("features.") and k.endswith((".weight", ".bias")) for k in state)
    assert state["features.21.weight"].shape == (512, 512, 3, 3)


def test_loss_network_imagenet_keeps_only_features_below_23(tmp_path):
    # a stand-in for torchvision's 528 MB file: the same key names, tiny tensors
    full_state = {f"features.{i}.{p}": torch.full((2,), float(i)) for i in (0, 2, 21, 24, 28) for p in ("weight", "bias")}
    full_state["classifier.0.weight"] = torch.zeros(3, 3)
    full = tmp_path / "vgg16-full.pth"
    torch.save(full_state, full)
    digest = hashlib.sha256(full.read_bytes()).hexdigest()
    params = tiny_params_dict()
    params["loss_network"] = {"weights": "imagenet", "url": full.as_uri(), "sha256": digest[:8]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "features.pth"
    assert _fetch("loss-network", "--params", str(tmp_path / "p.yaml"), "--output", str(out),
                  "--downloads", str(tmp_path / "dl")) == 0
    state = torch.load(out, weights_only=True)
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in (0, 2, 21) for p in ("weight", "bias"))
    assert torch.equal(state["features.21.bias"], full_state["features.21.bias"])
    cached = tmp_path / "dl" / "local" / full.relative_to("/")
    assert cached.is_file()  # cached for the next run

    params["loss_network"]["sha256"] = "deadbeef"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    cached.unlink()
    assert _fetch("loss-network", "--params", str(tmp_path / "p.yaml"), "--output", str(tmp_path / "bad.pth"),
                  "--downloads", str(tmp_path / "dl")) == 2
    assert not (tmp_path / "bad.pth").exists()


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_content_zip_tar_url_and_folder_sources(tmp_path):
    photos = tmp_path / "photos" / "train2014"
    photos.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 80, 0, 0)).save(photos / f"{i}.jpg")
    (photos / ".DS_Store").write_bytes(b"hidden")
    expected = {f"train2014/{i}.jpg": (photos / f"{i}.jpg").read_bytes() for i in range(3)}
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.write(photos / f"{i}.jpg", f"train2014/{i}.jpg")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dl = ["--downloads", str(tmp_path / "dl")]

    # a zip download is the output as is (hard-linked from the cache)
    url_params = _params(tmp_path, content={"url": archive.as_uri(), "md5": md5})
    assert _fetch("content", "--params", str(url_params), "--output", str(tmp_path / "c1.zip"), *dl) == 0
    assert (tmp_path / "c1.zip").read_bytes() == archive.read_bytes()

    # a tar download is repacked: regular members only, into a zip
    tar = tmp_path / "train.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(photos.parent / "train2014", "train2014", filter=lambda m: None if m.name.endswith(".DS_Store") else m)
        link = tarfile.TarInfo("train2014/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "0.jpg"
        tf.addfile(link)
    tar_params = _params(tmp_path, content={"url": tar.as_uri(), "md5": hashlib.md5(tar.read_bytes()).hexdigest()})
    assert _fetch("content", "--params", str(tar_params), "--output", str(tmp_path / "c3.zip"), *dl) == 0
    assert _members(tmp_path / "c3.zip") == expected

    # a local folder is packed, hidden files left out, the same bytes every time
    folder_params = _params(tmp_path, content={"folder": str(tmp_path / "photos")})
    assert _fetch("content", "--params", str(folder_params), "--output", str(tmp_path / "c2.zip")) == 0
    assert _members(tmp_path / "c2.zip") == expected
    assert _fetch("content", "--params", str(folder_params), "--output", str(tmp_path / "c4.zip")) == 0
    assert (tmp_path / "c4.zip").read_bytes() == (tmp_path / "c2.zip").read_bytes()
    assert (tmp_path / "c4.zip").read_bytes() == (tmp_path / "c3.zip").read_bytes()  # same files, same zip


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_content_tar_stored_out_of_name_order_is_repacked_in_one_pass(tmp_path, compression, monkeypatch):
    """`tar czf` stores files in the folder's listing order, not sorted. The zip is packed in sorted order,
    and reading a compressed tar out of order would decompress it again from the start for every
    member; it is decompressed once into a temporary plain tar instead (removed afterwards)."""
    import _compression  # the reader under gzip, bz2 and lzma: a backward seek rewinds it to the start

    rewinds = []
    real_rewind = _compression.DecompressReader._rewind
    monkeypatch.setattr(_compression.DecompressReader, "_rewind", lambda self: rewinds.append(1) or real_rewind(self))
    files = {f"train2014/{i:02d}.jpg": bytes([i]) * 300 for i in range(30)}
    tar = tmp_path / f"train.tar{'.' + compression if compression else ''}"
    with tarfile.open(tar, f"w:{compression}") as tf:
        for name in reversed(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tf.addfile(info, io.BytesIO(files[name]))
    params = _params(tmp_path, content={"url": tar.as_uri(), "md5": hashlib.md5(tar.read_bytes()).hexdigest()})
    out = tmp_path / "out" / "content.zip"
    assert _fetch("content", "--params", str(params), "--output", str(out), "--downloads", str(tmp_path / "dl")) == 0
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == sorted(files)
        assert {name: zf.read(name) for name in zf.namelist()} == files
    assert os.listdir(out.parent) == ["content.zip"]  # the plain copy is gone
    assert len(rewinds) <= 1  # read out of order from the compressed tar itself: a rewind for most of the 30 members


def test_content_folder_follows_links_to_folders_once(tmp_path):
    """A photo folder that links to a dataset elsewhere (`photos/coco -> /data/coco`) trains on it; a link
    back up the tree is not walked forever, and the folder it names is read once."""
    from stylepipe.data.resize import list_files

    photos, coco = tmp_path / "photos", tmp_path / "datasets" / "coco"
    photos.mkdir()
    coco.mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 0, 0)).save(photos / "own.png")
    for i in range(2):
        Image.new("RGB", (20, 20), (0, i * 90, 0)).save(coco / f"c{i}.png")
    (photos / "coco").symlink_to(coco, target_is_directory=True)
    (coco / "up").symlink_to(tmp_path / "datasets", target_is_directory=True)  # a cycle through coco
    expected = ["coco/c0.png", "coco/c1.png", "own.png"]
    assert list_files(photos) == expected
    params = _params(tmp_path, content={"folder": str(photos)})
    assert _fetch("content", "--params", str(params), "--output", str(tmp_path / "content.zip")) == 0
    assert sorted(_members(tmp_path / "content.zip")) == expected


def test_content_zip_in_a_cache_on_another_file_system_is_copied_only_where_it_fits(tmp_path, capsys):
    """No hard link across file systems: the archive is copied, and a copy the disk cannot hold is refused
    at once (COCO's is 13 GB), naming both sizes and how to get a link instead."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm, a file system other than the temporary folder's")
    cache = Path(tempfile.mkdtemp(dir=shm, prefix="stylepipe-test-"))
    try:
        jpeg, photos = io.BytesIO(), io.BytesIO()
        Image.new("RGB", (20, 20), (200, 0, 0)).save(jpeg, "JPEG")
        with zipfile.ZipFile(photos, "w") as zf:
            zf.writestr("train2014/0.jpg", jpeg.getvalue())
        small = "file:///nowhere/small.zip"  # never read: the file already in the cache is reused
        cache_path(small, cache).parent.mkdir(parents=True)
        cache_path(small, cache).write_bytes(photos.getvalue())
        params = _params(tmp_path, content={"url": small})
        assert _fetch("content", "--params", str(params), "--output", str(tmp_path / "small.zip"),
                      "--downloads", str(cache)) == 0
        assert (tmp_path / "small.zip").read_bytes() == photos.getvalue()
        assert (tmp_path / "small.zip").stat().st_nlink == 1  # a copy

        # a zip behind a 1 TB hole: it takes no room where it is, and no disk here has room for its copy
        huge = "file:///nowhere/huge.zip"
        with open(cache_path(huge, cache), "wb") as f:
            f.truncate(1 << 40)
            f.seek(1 << 40)
            f.write(photos.getvalue())
        params = _params(tmp_path, content={"url": huge})
        assert _fetch("content", "--params", str(params), "--output", str(tmp_path / "huge.zip"),
                      "--downloads", str(cache)) == 2
        err = capsys.readouterr().err
        assert f"{cache_path(huge, cache)} is on another file system than {tmp_path}" in err, err
        assert "needs 1,099.5 GB" in err and "$STYLEPIPE_DOWNLOADS" in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "small.zip"]  # nothing half-written
    finally:
        shutil.rmtree(cache)


def test_content_without_a_single_image_is_refused(tmp_path, capsys):
    """An empty folder or an archive of other files would become an empty content set, and fail later in resize."""
    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "README.txt").write_text("photos go here")
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(notes / "README.txt", "README.txt")
    sources = {"no files": {"folder": str(empty)},
               "1 file(s), none an image": {"folder": str(notes)},
               "1 file(s), none an image ": {"url": archive.as_uri(), "md5": hashlib.md5(archive.read_bytes()).hexdigest()}}
    for found, content in sources.items():
        params = _params(tmp_path, content=content)
        assert _fetch("content", "--params", str(params), "--output", str(tmp_path / "c.zip"),
                      "--downloads", str(tmp_path / "dl")) == 2
        err = capsys.readouterr().err
        key = "data.content.folder" if "folder" in content else "data.content.url"
        assert f"key {key}: " in err and f": {found.strip()} (images are " in err, err
        assert not (tmp_path / "c.zip").exists()


def test_content_tar_with_escaping_member_is_refused(tmp_path, capsys):
    tar = tmp_path / "evil.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("../outside.jpg")
        tf.addfile(info)
    p = _params(tmp_path, content={"url": tar.as_uri(), "md5": hashlib.md5(tar.read_bytes()).hexdigest()})
    assert _fetch("content", "--params", str(p), "--output", str(tmp_path / "c.zip"),
                  "--downloads", str(tmp_path / "dl")) == 2
    assert "escapes" in capsys.readouterr().err
    assert not (tmp_path / "c.zip").exists()


def test_eval_from_file_and_url_with_checksum(tmp_path, capsys):
    src = tmp_path / "photo.jpg"
    Image.fromarray(np.full((10, 14, 3), 200, np.uint8)).save(src)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    eval_items = [{"name": "local", "file": str(src)}, {"name": "remote", "url": src.as_uri(), "sha256": good}]
    p = _params(tmp_path, eval=eval_items)
    assert _fetch("eval", "--params", str(p), "--output", str(tmp_path / "eval"),
                  "--downloads", str(tmp_path / "dl")) == 0
    assert sorted(f.name for f in (tmp_path / "eval").iterdir()) == [".stylepipe-eval", "local.png", "remote.png"]

    eval_items[1]["sha256"] = "0" * 16
    (tmp_path / "dl" / "local" / src.relative_to("/")).unlink()
    p = _params(tmp_path, eval=eval_items)
    assert _fetch("eval", "--params", str(p), "--output", str(tmp_path / "eval2"),
                  "--downloads", str(tmp_path / "dl")) == 2
    err = capsys.readouterr().err
    assert "data.eval[1] (remote)" in err and "mismatch" in err
    assert not (tmp_path / "eval2").exists()


def test_unknown_skimage_sample_lists_the_bundled_ones(tmp_path, capsys):
    p = _params(tmp_path, content={"skimage": ["astronaut", "no_such_sample"]})
    assert _fetch("content", "--params", str(p), "--output", str(tmp_path / "c.zip")) == 2
    err = capsys.readouterr().err
    assert "no_such_sample" in err and "astronaut" in err and "data.content.skimage" in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["params.yaml"]  # no zip, no temp file left


def test_unreadable_cached_style_image_is_moved_aside_not_deleted(tmp_path, capsys):
    # copied by hand into the cache (or an HTML page a server sent instead of the image)
    params = tiny_params_dict()
    params["styles"]["candy"] = {"url": "http://127.0.0.1:9/images/candy.jpg"}  # no checksum: reused as is
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    cached = tmp_path / "dl" / "127.0.0.1_9" / "images" / "candy.jpg"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html>not an image</html>")
    assert _fetch("style", "--params", str(tmp_path / "p.yaml"), "--style", "candy",
                  "--output", str(tmp_path / "candy.png"), "--downloads", str(tmp_path / "dl")) == 2
    err = capsys.readouterr().err
    aside = cached.with_name("candy.jpg.not-an-image")
    assert "styles.candy" in err and str(cached) in err and str(aside) in err
    assert aside.read_bytes() == b"<html>not an image</html>"  # kept
    assert not cached.exists()  # the next run downloads it again
    assert not (tmp_path / "candy.png").exists()


def test_stylepipe_downloads_is_one_cache_for_every_copy_of_the_repository(tmp_path, monkeypatch):
    """Clones and queued DVC experiments each have their own scratch/: $STYLEPIPE_DOWNLOADS gives them one cache."""
    src = tmp_path / "photo.jpg"
    Image.fromarray(np.full((10, 14, 3), 90, np.uint8)).save(src)
    item = {"name": "remote", "url": src.as_uri(), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    shared = tmp_path / "shared"
    monkeypatch.setenv("STYLEPIPE_DOWNLOADS", str(shared))
    for copy in ("clone-a", "clone-b"):
        (tmp_path / copy).mkdir()
        monkeypatch.chdir(tmp_path / copy)
        assert _fetch("eval", "--params", str(_params(tmp_path / copy, eval=[item])), "--output", "data/eval") == 0
        assert (tmp_path / copy / "data/eval/remote.png").is_file()
        src.unlink(missing_ok=True)  # the second copy can only have it from the shared cache
    assert (shared / "local" / src.relative_to("/")).is_file()
    assert not (tmp_path / "clone-a" / "scratch").exists()

    # --downloads still names the cache of one command
    assert _fetch("eval", "--params", str(_params(tmp_path, eval=[item])), "--output", str(tmp_path / "e"),
                  "--downloads", str(tmp_path / "own")) == 2  # not in that cache, and the file is gone
