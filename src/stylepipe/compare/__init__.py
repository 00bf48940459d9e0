"""Compare git revisions: params, metrics, training curves and stylized images.

`dvc metrics diff` prints numbers; style transfer has to be looked at. For each
revision this reads what the pipeline recorded (params.yaml, the package versions
in constraints.txt, results/metrics.json and each style's throughput in results/speed/,
each style's training summary (device, precision, steps), each style's curves.csv and
val_curves.csv, the evaluation images and their stylizations) from git and the
DVC cache or remote through `dvc.api.DVCFileSystem`; the special revision
``workspace`` means the files on disk. It writes one self-contained HTML page
(images as data URIs, inline CSS and SVG, nothing fetched when it is opened) and,
with ``--png``, a contact sheet.

A revision whose artifacts cannot be read (not in the cache, no remote) is
rendered with the list of missing files and the command that fetches them;
outputs a revision never recorded are listed as such, and an error DVC raised is
shown as it is. For the workspace, the stages `dvc status` finds out of date are
listed. Losses are coloured better/worse only where they compare: the weighted
losses scale with the params' weights, so when those differ the page says so and
the unweighted ones (``*_loss_unweighted``) are the ones to read.

This module is the command; the parts are ``revisions`` (which commits, labels),
``source`` (reading a revision's files through git and DVC), ``artifacts`` (what
the pipeline recorded, into a Revision), ``images`` (encoding for the page),
``tables`` and ``weights`` (params and metrics tables, which losses compare),
``page`` (the HTML) and ``sheet`` (the contact sheet).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

from stylepipe.arguments import non_negative_int
from stylepipe.compare.artifacts import read_revision
from stylepipe.compare.images import (DEFAULT_IMAGE_FORMAT, DEFAULT_IMAGE_QUALITY, DEFAULT_IMAGE_SIZE, IMAGE_FORMATS,
                                      IMAGE_WIDTH)
from stylepipe.compare.page import render_html
from stylepipe.compare.revisions import (WORKSPACE, CompareError, Revision, default_revisions, git, label_revisions,
                                         resolve_revision)
from stylepipe.compare.sheet import contact_sheet
from stylepipe.compare.source import fetch_hint, workspace_status
from stylepipe.io import atomic_path, check_output_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "revisions", nargs="*", metavar="REV",
        help=f"git revisions (commit, branch, tag, DVC experiment name) to compare, the first is the baseline; "
             f"`{WORKSPACE}` means the files on disk (default: HEAD {WORKSPACE}; a single REV is compared "
             f"with the {WORKSPACE})",
    )
    parser.add_argument("--output", "-o", type=Path, default=Path("compare.html"), metavar="HTML",
                        help="HTML report to write (default: compare.html)")
    parser.add_argument("--png", type=Path, default=None, metavar="PNG",
                        help="also write a contact sheet of the evaluation images and their stylizations")
    parser.add_argument("--repo", type=Path, default=Path("."), metavar="PATH",
                        help="the git + DVC repository (default: .)")
    parser.add_argument("--max-image-size", type=non_negative_int, default=DEFAULT_IMAGE_SIZE, metavar="PX",
                        help=f"long edge of images embedded in the HTML, which shows them {IMAGE_WIDTH} px wide; "
                             f"0 keeps them as they are (default: {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default=DEFAULT_IMAGE_FORMAT,
                        help=f"format of the embedded images; png is lossless (default: {DEFAULT_IMAGE_FORMAT})")
    parser.add_argument("--image-quality", type=int, default=DEFAULT_IMAGE_QUALITY, metavar="Q",
                        help=f"jpeg/webp quality, 1-100 (default: {DEFAULT_IMAGE_QUALITY})")
    parser.add_argument("--cell-size", type=int, default=192, metavar="PX",
                        help="long edge of one image in the contact sheet (default: 192)")


def compare(repo: Path, names: Iterable[str], max_image_size: int = DEFAULT_IMAGE_SIZE,
            image_format: str = DEFAULT_IMAGE_FORMAT, image_quality: int = DEFAULT_IMAGE_QUALITY) -> list[Revision]:
    """Resolve ``names`` in ``repo`` and read each revision, saying on stderr what is wrong with it."""
    repo = Path(repo)
    try:
        git(repo, "rev-parse", "--show-toplevel")
    except CompareError as err:
        raise CompareError(f"{repo} is not inside a git repository ({err})") from None
    revs = [resolve_revision(repo, name) for name in names]
    head = git(repo, "rev-parse", "--verify", "--quiet", "HEAD").strip()
    for rev in revs:
        rev.checked_out = rev.sha == head
    label_revisions(revs)
    for rev in revs:
        print(f"compare: reading {rev.label}: {rev.subject}", file=sys.stderr)
        read_revision(repo, rev, max_image_size, image_format, image_quality)
        if rev.is_workspace:
            rev.stale, rev.status_error = workspace_status(repo)
        _log_problems(rev)
    return revs


def _log_problems(rev: Revision) -> None:
    """One line each for out-of-date outputs, a failed `dvc status` and missing artifacts."""
    if rev.stale:
        print(f"compare: {rev.label}: outputs out of date in {len(rev.stale)} stage(s) "
              f"({', '.join(stage for stage, _ in rev.stale)}); `dvc repro` updates them", file=sys.stderr)
    elif rev.status_error:
        print(f"compare: {rev.label}: `dvc status` failed: {rev.status_error}", file=sys.stderr)
    if rev.missing:
        errors = sorted({m.error for m in rev.missing if m.reason == "dvc" and m.error})
        print(f"compare: {rev.label}: {len(rev.missing)} artifact(s) missing"
              + "".join(f"; DVC: {error}" for error in errors), file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    if args.cell_size < 16:
        print(f"stylepipe compare: error: --cell-size {args.cell_size} is too small (at least 16)", file=sys.stderr)
        return 2
    if not 1 <= args.image_quality <= 100:
        print(f"stylepipe compare: error: --image-quality {args.image_quality} is not in 1-100", file=sys.stderr)
        return 2
    check_output_files({"output": args.output, "png": args.png}, {"png": (".png",)})
    try:
        revs = compare(args.repo, default_revisions(list(args.revisions)), args.max_image_size,
                       args.image_format, args.image_quality)
    except CompareError as err:
        print(f"stylepipe compare: error: {err}", file=sys.stderr)
        return 2
    page = render_html(revs)
    with atomic_path(args.output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"compare: wrote {args.output} ({len(page) / 1e6:.1f} MB)", file=sys.stderr)
    if args.png:
        sheet = contact_sheet(revs, args.cell_size)
        with atomic_path(args.png) as tmp:
            sheet.save(tmp, format="PNG")
        print(f"compare: wrote {args.png} ({sheet.width}x{sheet.height})", file=sys.stderr)
    for rev in revs:
        if rev.missing and fetch_hint(rev):
            print(f"compare: {rev.label} is missing artifacts; fetch them with: {fetch_hint(rev)}", file=sys.stderr)
    return 0
