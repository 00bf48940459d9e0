"""Collect every style's metrics into one file; draw the gallery and the training curves.

``results/metrics.json`` maps style → metrics, the file ``dvc metrics diff``
compares across commits. The gallery is one picture: a line naming each
column (``style``, then each evaluation image), a row with the evaluation
(content) images, then one labelled row per style with its style image (when
given) and its stylization of each; a label too long for its column is wrapped
(at ``-``, ``_``, ``.`` or a space when it can be). Styles and images are in name
order, so the same inputs give the same bytes.

The styles are the ones under ``styles`` in the params files, not whatever the
folders hold: each style's files are read by name (``<metrics-dir>/STYLE.json``,
``<stylized-root>/STYLE/``, ``<style-images-dir>/STYLE.png``), so the files a
removed style left behind stay out of the report.

The curves picture (SVG, with ``--curves``) has one chart per loss (and the
learning rate when a schedule moves it) against the optimizer step, one line
per style, read from ``<train-dir>/STYLE/curves.csv``, and a dashed one for
its validation losses where ``<train-dir>/STYLE/val_curves.csv`` has them. A style's
colour is its place in name order (16 colours; more styles share them).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from stylepipe.charts import PALETTE, parse_curves, svg_chart, svg_figure
from stylepipe.config import load_params, style_names
from stylepipe.data.images import ImageError, load_rgb_and_alpha
from stylepipe.io import atomic_path, check_output_files, read_json, write_json

CELL = 192  # each image is fitted into a CELL×CELL square
PAD = 4
LABEL_WIDTH = 128
FONT_SIZE = 16
LINE_HEIGHT = 19
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
CURVE_COLUMNS = ("total_loss", "content_loss", "style_loss", "tv_loss", "lr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", nargs="+", required=True, type=Path, metavar="FILE",
                        help="params files, merged in order; the report covers the styles under `styles`")
    parser.add_argument("--metrics-dir", required=True, type=Path,
                        help="folder of per-style metrics (results/metrics): STYLE.json for each style")
    parser.add_argument("--eval-images", required=True, type=Path, help="folder of evaluation (content) images")
    parser.add_argument("--stylized-root", required=True, type=Path,
                        help="folder holding one folder of stylized images per style (results/stylized)")
    parser.add_argument("--style-images-dir", type=Path,
                        help="folder of style images (data/styles): STYLE.png starts each style's row")
    parser.add_argument("--output", required=True, type=Path, help="all styles' metrics (JSON)")
    parser.add_argument("--gallery", required=True, type=Path, help="gallery image (PNG)")
    parser.add_argument("--train-dir", type=Path,
                        help="folder of training outputs (results/train): STYLE/curves.csv for each style")
    parser.add_argument("--curves", type=Path, help="training curves of all styles (SVG); needs --train-dir")


def collect_metrics(metrics_dir: Path, styles: list[str]) -> dict[str, dict]:
    """``{style: metrics}`` from ``metrics_dir/STYLE.json``, styles in name order."""
    if not styles:
        raise ValueError("no styles to report")
    metrics = {}
    for style in sorted(styles):
        path = metrics_dir / f"{style}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: metrics file missing; run `stylepipe evaluate` for style {style}")
        metrics[style] = _checked_metrics(path, read_json(path), style)
    return metrics


def _checked_metrics(path: Path, data, style: str) -> dict:
    """``data`` if it is what `stylepipe evaluate` writes, an object of finite numbers; a ValueError
    naming ``path`` otherwise (results/metrics.json must stay valid JSON for `dvc metrics diff`)."""
    bad = ([] if isinstance(data, dict) else ["not an object of metrics"]) or [
        f"{key}: {value!r}" for key, value in data.items()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)]
    if bad:
        raise ValueError(f"{path}: not a metrics file ({'; '.join(bad)}); run `stylepipe evaluate` for style {style} "
                         "again")
    return data


def read_curves(train_dir: Path, styles: list[str], name: str = "curves.csv",
                required: bool = True) -> dict[str, pd.DataFrame]:
    """``{style: curves}`` from ``train_dir/STYLE/<name>``, styles in name order; without
    ``required``, a style whose file is absent is left out."""
    curves = {}
    for style in sorted(styles):
        path = train_dir / style / name
        if not path.is_file():
            if not required:
                continue
            raise FileNotFoundError(f"{path}: training curves missing; run `stylepipe train` for style {style} "
                                    "with --curves")
        try:
            curves[style] = parse_curves(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
            raise ValueError(f"{path}: not a curves CSV ({err}); run `stylepipe train` for style {style} again") from err
        if "step" not in curves[style]:
            raise ValueError(f"{path}: no `step` column; run `stylepipe train` for style {style} again")
    return curves


def draw_curves(curves: dict[str, pd.DataFrame], val_curves: dict[str, pd.DataFrame] | None = None) -> str:
    """One chart per loss that is not zero throughout (and the learning rate when it changes), one
    line per style, dashed for the validation losses (``val_curves``); an SVG document."""
    colours = {style: PALETTE[i % len(PALETTE)] for i, style in enumerate(curves)}
    series = [(style, colours[style], frame) for style, frame in curves.items()]
    val_curves = {style: frame for style, frame in (val_curves or {}).items() if style in colours and len(frame)}
    series += [(f"{style}, validation", colours[style], frame, True) for style, frame in val_curves.items()]

    def shown(column: str) -> bool:
        values = [frame[column].dropna() for frame in curves.values() if column in frame]
        if column == "lr":  # a constant learning rate says nothing a chart could show
            return any(v.nunique() > 1 for v in values)
        return any((v != 0).any() for v in values)

    charts = [svg_chart(series, column, tapered=False) for column in CURVE_COLUMNS if shown(column)]
    title = "Training curves (per optimizer step" + ("; dashed: validation)" if val_curves else ")")
    return svg_figure(title, charts, [(s, c) for s, c in colours.items()])


def gallery_size(rows: int, cols: int, header_lines: int = 1) -> tuple[int, int]:
    """(width, height) of a gallery with ``rows`` rows (the content row included), ``cols`` images
    per row, and a header of ``header_lines`` lines naming the columns."""
    return LABEL_WIDTH + cols * (CELL + PAD) + PAD, _header_height(header_lines) + rows * (CELL + PAD) + PAD


def _header_height(lines: int) -> int:
    return PAD + lines * LINE_HEIGHT


def wrap_text(text: str, font, width: float, max_lines: int | None = None) -> list[str]:
    """``text`` in lines no wider than ``width`` px in ``font``: broken after ``-``, ``_``, ``.`` or a
    space where possible, else anywhere; with ``max_lines``, the last line ends in an ellipsis if cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in re.findall(r"[^-_. ]+[-_. ]*|[-_. ]+", paragraph) or [""]:
            if font.getlength(line + piece) <= width:
                line += piece
                continue
            if line:
                lines.append(line.rstrip(" "))
                line = ""
            for char in piece:  # a piece wider than the line: break it anywhere
                if line and font.getlength(line + char) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line.rstrip(" "))
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


def _thumbnail(path: Path, remedy: str) -> Image.Image:
    """``path`` fitted into a CELL×CELL square, decoded as stylize and evaluate decode it (upright,
    transparency on white); an unreadable image is a ValueError naming it and ``remedy``, the step
    that writes it again."""
    try:
        image, _ = load_rgb_and_alpha(path, for_size=(CELL, CELL))
    except ImageError as err:  # empty, truncated, not an image at all
        raise ImageError(path, f"{err.reason}; {remedy}") from err
    return ImageOps.contain(image, (CELL, CELL), method=Image.Resampling.LANCZOS)


def draw_gallery(eval_dir: Path, stylized_root: Path, styles: list[str],
                 style_images: dict[str, Path] | None = None) -> Image.Image:
    """Rows: content images, then one row per style; columns: the style image
    (when ``style_images`` is given), then the evaluation images."""
    from stylepipe.evaluate import evaluation_images

    content = evaluation_images(eval_dir)  # as stylize reads them and evaluate measures them
    if style_images:
        missing = [s for s in styles if s not in style_images]
        if missing:
            raise FileNotFoundError(f"no style image given for {', '.join(missing)}: pass data/styles/STYLE.png")
    # each image with the step that writes it, named when the image cannot be read
    fetch_eval = "run `stylepipe fetch eval` again"
    rows: list[tuple[str, list[tuple[Path, str] | None]]] = [
        ("content", ([None] if style_images else []) + [(p, fetch_eval) for p in content])]
    for style in styles:
        stylized = [stylized_root / style / f"{p.stem}.png" for p in content]
        missing = [str(p) for p in stylized if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"stylized images missing: {', '.join(missing)}; run `stylepipe stylize` for {style}")
        style_image = [(style_images[style], f"run `stylepipe fetch style` for {style} again")] if style_images else []
        rows.append((style, style_image + [(p, f"run `stylepipe stylize` for {style} again") for p in stylized]))

    font = ImageFont.load_default(size=FONT_SIZE)
    names = (["style"] if style_images else []) + [p.stem for p in content]
    headers = [wrap_text(name, font, CELL, max_lines=3) for name in names]
    header_lines = max(len(lines) for lines in headers)
    canvas = Image.new("RGB", gallery_size(len(rows), len(rows[0][1]), header_lines), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(headers):
        centre = LABEL_WIDTH + PAD + c * (CELL + PAD) + CELL // 2
        for i, line in enumerate(lines):
            # on a common baseline, whatever the letters' heights
            draw.text((centre, PAD + (i + 1) * LINE_HEIGHT - 4), line, fill=TEXT, font=font, anchor="ms")
    for r, (label, paths) in enumerate(rows):
        top = _header_height(header_lines) + PAD + r * (CELL + PAD)
        lines = wrap_text(label, font, LABEL_WIDTH - 2 * PAD, max_lines=CELL // LINE_HEIGHT)
        first = top + CELL // 2 - (len(lines) - 1) * LINE_HEIGHT / 2
        for i, line in enumerate(lines):
            draw.text((PAD, first + i * LINE_HEIGHT), line, fill=TEXT, font=font, anchor="lm")
        for c, image in enumerate(paths):
            if image is None:  # the header row has no style image
                continue
            thumb = _thumbnail(*image)
            left = LABEL_WIDTH + PAD + c * (CELL + PAD)
            # centre the thumbnail in its cell
            canvas.paste(thumb, (left + (CELL - thumb.width) // 2, top + (CELL - thumb.height) // 2))
    return canvas


def main(args: argparse.Namespace) -> int:
    check_output_files({"output": args.output, "gallery": args.gallery, "curves": args.curves},
                       {"gallery": (".png",), "curves": (".svg",)})
    styles = style_names(load_params(args.params))
    metrics = collect_metrics(args.metrics_dir, styles)
    others = sorted(p.stem for p in args.metrics_dir.glob("*.json") if p.stem not in metrics)
    if others:
        print(f"left out (not under `styles`): {', '.join(others)}")
    style_images = None
    if args.style_images_dir is not None:
        style_images = {style: args.style_images_dir / f"{style}.png" for style in metrics}
        for style, path in style_images.items():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: style image missing; run `stylepipe fetch style` for {style}")
    if args.curves is not None and args.train_dir is None:
        raise ValueError("--curves needs --train-dir, the folder holding STYLE/curves.csv (results/train)")
    curves = read_curves(args.train_dir, list(metrics)) if args.curves is not None else None
    # validation curves where training wrote them (`stylepipe train --val-curves`)
    val_curves = read_curves(args.train_dir, list(metrics), "val_curves.csv", required=False) if curves else None
    gallery = draw_gallery(args.eval_images, args.stylized_root, list(metrics), style_images)
    if curves is not None and len(curves) > len(PALETTE):
        print(f"{len(curves)} styles, {len(PALETTE)} colours: styles share colours in {args.curves} "
              "(each line's tooltip names its style)")
    if curves is not None:
        with atomic_path(args.curves) as tmp:
            tmp.write_text(draw_curves(curves, val_curves), encoding="utf-8")
    with atomic_path(args.gallery) as tmp:
        gallery.save(tmp, format="PNG")
    write_json(args.output, metrics)
    print(f"{len(metrics)} styles → {args.output}, gallery {gallery.width}×{gallery.height} → {args.gallery}"
          + (f", curves → {args.curves}" if curves is not None else ""))
    return 0
