"""`stylepipe fetch`: get what params.yaml names, verified, into the pipeline's paths.

    stylepipe fetch content       --params P.. --output data/raw/content.zip
    stylepipe fetch eval          --params P.. --output data/eval
    stylepipe fetch style         --params P.. --style S --output data/styles/S.png
    stylepipe fetch loss-network  --params P.. --output data/models/vgg16_features.pth

Downloads go through :func:`stylepipe.data.download.download` into a cache
(``scratch/downloads/``, ``$STYLEPIPE_DOWNLOADS`` or ``--downloads``) that neither Snakemake nor DVC
declares, so an interrupted 13 GB download resumes on the next run instead of
being deleted. On an air-gapped machine, put the files there yourself: they
are verified and reused. Every output is written atomically.

The content set is always one zip file: Snakemake, DVC and cluster file
systems check one large file far faster than 80,000 small ones, and COCO's
13 GB zip is used as downloaded (hard-linked from the cache), not extracted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from PIL import Image

from stylepipe.config import load_params, style_source
from stylepipe.data.download import (DOWNLOAD_CACHE, DOWNLOAD_CACHE_VARIABLE, DownloadError, cache_path, download,
                                     gigabytes)
from stylepipe.data.images import ImageError, load_rgb
from stylepipe.data.shards import OutputNotOurs, atomic_directory
from stylepipe.io import atomic_path, new_temporary

WHAT = ("content", "eval", "style", "loss-network")


class SourceError(ValueError):
    """A source in params.yaml cannot be fetched; the message names the key."""


# ---------------------------------------------------------------- skimage samples


def _skimage_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def skimage_names() -> list[str]:
    """The sample images bundled in the scikit-image wheel (no network needed)."""
    return sorted(p.stem for p in _skimage_dir().iterdir() if p.suffix in (".png", ".jpg"))


def skimage_file(name: str) -> Path | None:
    """The bundled file of a sample named by its file stem (``ihc``, ``motorcycle_left``)."""
    for suffix in (".png", ".jpg"):
        path = _skimage_dir() / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def skimage_image(name: str, key: str) -> Image.Image:
    """A bundled scikit-image sample by file stem (``ihc``) or loader name (``immunohistochemistry``)."""
    path = skimage_file(name)
    if path is not None:
        image = Image.open(path)
        image.load()
        return image
    import numpy as np
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if callable(loader) and not name.startswith("_"):
        try:
            array = np.asarray(loader())
        except Exception as err:  # not bundled: scikit-image would download it
            raise SourceError(f"key {key}: scikit-image sample {name!r} is not available offline ({err})") from err
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
            return Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array)
    raise SourceError(
        f"key {key}: no scikit-image sample named {name!r}; bundled samples: {', '.join(skimage_names())}"
    )


# ---------------------------------------------------------------- single images


def _save_png(image: Image.Image, output: Path) -> Path:
    with atomic_path(output) as tmp:
        image.save(tmp, format="PNG")
    return output


def _image_from_source(source: Mapping, key: str, downloads: Path, seed: int) -> Image.Image:
    """One RGB image (EXIF-transposed) from a ``url | file | skimage | generate`` source."""
    try:
        if "url" in source:
            path = download(
                source["url"], cache_path(source["url"], downloads), md5=source.get("md5"), sha256=source.get("sha256"),
                lock=True,
            )
            try:
                return load_rgb(path)
            except ImageError as err:
                # e.g. an HTML page served in place of the image (fetched again next time),
                # or a wrong file copied into the cache by hand: set aside, never deleted
                aside = path.with_name(path.name + ".not-an-image")
                os.replace(path, aside)
                raise SourceError(
                    f"key {key}.url: {err}; moved aside to {aside} (the next run downloads the URL again)"
                ) from err
        if "file" in source:
            if not Path(source["file"]).is_file():
                raise SourceError(f"key {key}.file: {source['file']} does not exist")
            return load_rgb(source["file"])
        if "skimage" in source:
            from stylepipe.data.images import to_rgb, upright

            return to_rgb(upright(skimage_image(source["skimage"], f"{key}.skimage")))
        if "generate" in source:
            from stylepipe.data.generate import generate

            return generate(source["generate"], seed=seed)
    except (ImageError, DownloadError) as err:
        raise SourceError(f"key {key}: {err}") from err
    raise SourceError(f"key {key}: no image source (give url, file, skimage or generate)")


def fetch_style(params: Mapping, style: str, output: Path, downloads: Path | None = None) -> Path:
    source = style_source(params, style)
    return _save_png(_image_from_source(source, f"styles.{style}", downloads, params["seed"]), output)


EVAL_MARK = ".stylepipe-eval"


def fetch_eval(params: Mapping, output: Path, downloads: Path | None = None) -> Path:
    items = params["data"]["eval"]  # validated: one file per name (config.validate)
    # a previous evaluation set carries our mark: a folder of someone's PNGs is not ours to replace
    target = atomic_directory(output, what="evaluation set", ours=lambda path: (path / EVAL_MARK).is_file())
    try:
        target.check()
    except OutputNotOurs as err:
        raise SourceError(str(err)) from err
    with target as tmp:
        for i, item in enumerate(items):
            image = _image_from_source(item, f"data.eval[{i}] ({item['name']})", downloads, params["seed"])
            _save_png(image, tmp / f"{item['name']}.png")
        # hidden: stylize and evaluate leave hidden files out of a folder's images
        (tmp / EVAL_MARK).write_text("the evaluation set of `stylepipe fetch eval`, replaced whole when it runs again\n")
    return output


# ---------------------------------------------------------------- content set


# Fixed metadata for every packed member, so the same inputs give the same
# bytes (and the same DVC hash) on every machine and every run.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_ATTR = (stat.S_IFREG | 0o644) << 16
CHUNK = 1 << 20


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no second copy of 13 GB
        return
    except OSError:
        pass
    # another file system (or no hard links there): a copy, refused at once if it cannot fit
    size, free = src.stat().st_size, shutil.disk_usage(dst.parent).free
    if size > free:
        raise SourceError(
            f"{src} is on another file system than {dst.parent}, so it would be copied there, not linked: the copy "
            f"needs {gigabytes(size)} and only {gigabytes(free)} are free. Free space there, or keep the download "
            f"cache (${DOWNLOAD_CACHE_VARIABLE}, or --downloads) on the same file system as the workspace: then "
            f"the archive is linked and takes no space twice")
    shutil.copyfile(src, dst)


def _member_info(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED  # JPEG and PNG do not compress further
    info.create_system = 3  # Unix, whatever the platform, so external_attr means the same
    info.external_attr = ZIP_ATTR
    info.file_size = size
    return info


def pack_zip(members: Iterable[tuple[str, int, Iterator[bytes]]], output: Path) -> Path:
    """Write ``(name, size, chunks)`` members into the zip ``output``, atomically and
    deterministically (members in the order given, stored, fixed date and mode)."""
    with atomic_path(output) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, size, chunks in members:
                with zf.open(_member_info(name, size), "w", force_zip64=size >= 0x7FFFFFFF) as dst:
                    for chunk in chunks:
                        dst.write(chunk)
    return output


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _folder_files(folder: Path) -> list[str]:
    """Regular files under ``folder`` as resize lists them (relative POSIX paths, sorted, hidden ones
    left out, links to folders followed)."""
    from stylepipe.data.resize import list_files

    return [name for name in list_files(folder) if (folder / name).is_file()]


def _require_images(names: list[str], where: str) -> None:
    """Refuse a content set without a single image file (resize would find nothing to train on)."""
    from stylepipe.data.images import IMAGE_SUFFIXES

    if any(Path(name).suffix.lower() in IMAGE_SUFFIXES for name in names):
        return
    found = f"{len(names)} file(s), none an image" if names else "no files"
    raise SourceError(f"{where}: {found} (images are {', '.join(sorted(IMAGE_SUFFIXES))} files); "
                      "point it at the training photographs")


def _folder_members(folder: Path) -> Iterator[tuple[str, int, Iterator[bytes]]]:
    from tqdm import tqdm

    for rel in tqdm(_folder_files(folder), desc=f"pack {folder}", unit="file"):
        path = folder / rel
        yield rel, path.stat().st_size, _file_chunks(path)


def _tar_members(archive: Path, beside: Path) -> Iterator[tuple[str, int, Iterator[bytes]]]:
    """The regular files of a tar archive, names checked and sorted (links, devices left out).

    Members stored out of name order are read from a plain copy of a
    compressed archive, decompressed once into a temporary file beside
    ``beside``: in a compressed stream every backward seek decompresses again
    from the start, which makes sorted reads of an unsorted .tar.gz quadratic.
    """
    from tqdm import tqdm

    from stylepipe.data.archive import _safe_name

    with tarfile.open(archive) as tf:
        files = {}
        for member in tf.getmembers():
            name = _safe_name(archive, member.name)  # refuses absolute and ``..`` names
            if member.isfile():
                files[name] = member
        in_order = list(files) == sorted(files)
    plain = archive if in_order else _decompressed(archive, beside)
    try:
        with tarfile.open(plain) as tf:
            for name in tqdm(sorted(files), desc=f"repack {archive.name}", unit="file"):
                f = tf.extractfile(files[name])
                yield name, files[name].size, iter(lambda: f.read(CHUNK), b"")
    finally:
        if plain != archive:
            plain.unlink(missing_ok=True)


_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma"}  # magic bytes -> module


def _decompressed(archive: Path, beside: Path) -> Path:
    """``archive`` itself if it is a plain tar, else a temporary plain copy of it beside ``beside``."""
    import importlib

    from tqdm import tqdm

    with open(archive, "rb") as f:
        head = f.read(6)
    module = next((name for magic, name in _COMPRESSED.items() if head.startswith(magic)), None)
    if module is None:
        return archive
    plain = new_temporary(beside)
    try:
        with importlib.import_module(module).open(archive, "rb") as src, open(plain, "wb") as dst, \
                tqdm(desc=f"decompress {archive.name}", unit="B", unit_scale=True) as bar:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                bar.update(len(chunk))
    except BaseException:
        plain.unlink(missing_ok=True)
        raise
    return plain


def _skimage_members(names: list[str]) -> Iterator[tuple[str, int, Iterator[bytes]]]:
    import io

    files = {}
    for name in names:
        bundled = skimage_file(name)
        if bundled is not None:
            files[bundled.name] = bundled.read_bytes()  # the file as shipped, no re-encoding
        else:
            buf = io.BytesIO()
            skimage_image(name, "data.content.skimage").save(buf, format="PNG")
            files[f"{name}.png"] = buf.getvalue()
    for arcname in sorted(files):
        yield arcname, len(files[arcname]), iter([files[arcname]])


def fetch_content(params: Mapping, output: Path, downloads: Path | None = None) -> Path:
    """The training photographs as ONE zip file (any layout inside; resize reads it in place)."""
    from stylepipe.data.archive import ArchiveError

    content = params["data"]["content"]
    output = Path(output)
    if "url" in content:
        archive = cache_path(content["url"], downloads)
        try:
            download(content["url"], archive, md5=content.get("md5"), sha256=content.get("sha256"), lock=True)
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    _require_images([i.filename for i in zf.infolist() if not i.is_dir()],
                                    f"key data.content.url: {archive}")
                with atomic_path(output) as tmp:
                    tmp.unlink()
                    _link_or_copy(archive, tmp)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as tf:
                    _require_images([m.name for m in tf.getmembers() if m.isfile()],
                                    f"key data.content.url: {archive}")
                pack_zip(_tar_members(archive, output), output)
            else:
                raise ArchiveError(f"{archive}: not a zip or tar archive")
        except (DownloadError, ArchiveError, tarfile.TarError, EOFError) as err:
            raise SourceError(f"key data.content.url: {err}") from err
    elif "folder" in content:
        folder = Path(content["folder"])
        if not folder.is_dir():
            raise SourceError(f"key data.content.folder: {folder} is not a folder")
        _require_images(_folder_files(folder), f"key data.content.folder: {folder}")
        pack_zip(_folder_members(folder), output)
    else:
        pack_zip(_skimage_members(list(content["skimage"])), output)
    return output


# ---------------------------------------------------------------- loss network


def fetch_loss_network(params: Mapping, output: Path, downloads: Path | None = None) -> Path:
    """VGG16 ``features[:23]`` weights (torchvision key names) for the perceptual losses."""
    import torch

    spec = params["loss_network"]
    if spec["weights"] == "random":
        from stylepipe.models.vgg import random_state_dict

        state = random_state_dict(params["seed"])
    else:
        path = cache_path(spec["url"], downloads)
        try:
            download(spec["url"], path, sha256=spec["sha256"], lock=True)
        except DownloadError as err:
            raise SourceError(f"key loss_network.url: {err}") from err
        full = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in full.items() if _is_loss_layer(k)}
        if not state:
            raise SourceError(f"key loss_network.url: {path} holds no `features.N.*` keys: not a torchvision VGG16")
    # through a file object: torch.save names the zip's folder after a path (here the random temp name)
    with atomic_path(output) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    return output


def _is_loss_layer(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) < 23


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=WHAT, help="what to fetch")
    parser.add_argument("--params", nargs="+", required=True, metavar="FILE", help="params files, merged in order")
    parser.add_argument("--output", required=True, type=Path, help="file or folder to create")
    parser.add_argument("--style", help="style name (for `fetch style`)")
    parser.add_argument(
        "--downloads", type=Path, default=None,
        help=f"download cache, resumable and reused (default ${DOWNLOAD_CACHE_VARIABLE}, else {DOWNLOAD_CACHE})",
    )


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    try:
        if args.what == "content":
            fetch_content(params, args.output, args.downloads)
        elif args.what == "eval":
            fetch_eval(params, args.output, args.downloads)
        elif args.what == "style":
            if not args.style:
                raise SourceError("`fetch style` needs --style NAME")
            fetch_style(params, args.style, args.output, args.downloads)
        else:
            fetch_loss_network(params, args.output, args.downloads)
    except SourceError as err:
        print(f"stylepipe fetch {args.what}: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.output}: ok")
    return 0
