"""`stylepipe fetch`: get what params.yaml names, verified, into the pipeline's paths.

    stylepipe fetch content       --params P.. --output data/raw/content
    stylepipe fetch eval          --params P.. --output data/eval
    stylepipe fetch style         --params P.. --style S --output data/styles/S.png
    stylepipe fetch loss-network  --params P.. --output data/models/vgg16_features.pth

Downloads go through :func:`stylepipe.data.download.download` into a cache
(``scratch/downloads/``, or ``--downloads``) that neither Snakemake nor DVC
declares, so an interrupted 13 GB download resumes on the next run instead of
being deleted. On an air-gapped machine, put the files there yourself: they
are verified and reused. Every output is written atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Mapping

from PIL import Image

from stylepipe.config import load_params, style_source
from stylepipe.data.download import DOWNLOAD_CACHE, DownloadError, cache_path, download
from stylepipe.data.images import ImageError, load_rgb
from stylepipe.data.shards import atomic_directory
from stylepipe.io import atomic_path

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
                source["url"], cache_path(source["url"], downloads), md5=source.get("md5"), sha256=source.get("sha256")
            )
            try:
                return load_rgb(path)
            except ImageError:
                path.unlink()  # e.g. an HTML page served in place of the image: fetch again next time
                raise
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


def fetch_style(params: Mapping, style: str, output: Path, downloads: Path = DOWNLOAD_CACHE) -> Path:
    source = style_source(params, style)
    return _save_png(_image_from_source(source, f"styles.{style}", downloads, params["seed"]), output)


def fetch_eval(params: Mapping, output: Path, downloads: Path = DOWNLOAD_CACHE) -> Path:
    items = params["data"]["eval"]
    names = [item["name"] for item in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(f"key data.eval: names must be unique, repeated: {', '.join(duplicates)}")
    with atomic_directory(output) as tmp:
        for i, item in enumerate(items):
            image = _image_from_source(item, f"data.eval[{i}] ({item['name']})", downloads, params["seed"])
            _save_png(image, tmp / f"{item['name']}.png")
    return output


# ---------------------------------------------------------------- content set


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same file system: no second copy of 13 GB
    except OSError:
        shutil.copy2(src, dst)


def fetch_content(params: Mapping, output: Path, downloads: Path = DOWNLOAD_CACHE) -> Path:
    """The training photographs as a folder of image files (any layout; resize searches it)."""
    from stylepipe.data.archive import ArchiveError, extract_archive

    content = params["data"]["content"]
    if "url" in content:
        archive = cache_path(content["url"], downloads)
        try:
            download(content["url"], archive, md5=content.get("md5"), sha256=content.get("sha256"))
            extract_archive(archive, output)
        except (DownloadError, ArchiveError) as err:
            raise SourceError(f"key data.content.url: {err}") from err
    elif "folder" in content:
        folder = Path(content["folder"])
        if not folder.is_dir():
            raise SourceError(f"key data.content.folder: {folder} is not a folder")
        with atomic_directory(output) as tmp:
            shutil.copytree(folder, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:
        with atomic_directory(output) as tmp:
            for name in content["skimage"]:
                bundled = skimage_file(name)
                if bundled is not None:
                    shutil.copyfile(bundled, tmp / bundled.name)  # the file as shipped, no re-encoding
                else:
                    _save_png(skimage_image(name, "data.content.skimage"), tmp / f"{name}.png")
    return output


# ---------------------------------------------------------------- loss network


def fetch_loss_network(params: Mapping, output: Path, downloads: Path = DOWNLOAD_CACHE) -> Path:
    """VGG16 ``features[:23]`` weights (torchvision key names) for the perceptual losses."""
    import torch

    spec = params["loss_network"]
    if spec["weights"] == "random":
        from stylepipe.models.vgg import random_state_dict

        state = random_state_dict(params["seed"])
    else:
        path = cache_path(spec["url"], downloads)
        try:
            download(spec["url"], path, sha256=spec["sha256"])
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
    parser.add_argument("--params", nargs="+", required=True, help="params files, merged in order")
    parser.add_argument("--output", required=True, type=Path, help="file or folder to create")
    parser.add_argument("--style", help="style name (for `fetch style`)")
    parser.add_argument(
        "--downloads", type=Path, default=DOWNLOAD_CACHE,
        help=f"download cache, resumable and reused (default {DOWNLOAD_CACHE})",
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
        return 1
    print(f"{args.output}: ok")
    return 0
