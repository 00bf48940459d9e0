"""The contact sheet (``--png``): one PNG with a row per (style, image) and a column per revision.

The first column is the content image, then each revision's stylization, under a
header of revision labels and subjects; a missing image is a red-framed cell.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from stylepipe.charts import PALETTE
from stylepipe.compare.revisions import Revision
from stylepipe.compare.tables import all_images, all_styles, content_differs


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(revs: list[Revision], cell: int = 192) -> Image.Image:
    """Rows: (style, image); columns: content, then each revision; a header of revision labels.
    An image whose content differs between revisions has a row of each revision's content first.

    Labels too long for their column are wrapped (``wrap_text``), never cut off mid-name."""
    from stylepipe.report import wrap_text

    styles, images = all_styles(revs), all_images(revs)
    # an image whose content differs between revisions gets a row of each one's content first
    differing = {image for image in images if content_differs(revs, image)}
    rows = [(None, image) for image in images if image in differing]
    rows += [(style, image) for style in styles for image in images]
    pad, label_w, line_h = 6, 150, 16
    font = _font(13)
    columns = 1 + len(revs)
    headers = [(["content"], "#222222")] + [
        (wrap_text(r.label, font, cell, max_lines=2) + wrap_text(r.subject, font, cell, max_lines=2),
         PALETTE[i % len(PALETTE)]) for i, r in enumerate(revs)]
    head_h = 2 * pad + line_h * max(len(lines) for lines, _ in headers)
    max_label_lines = max(1, (cell - 8) // line_h)
    sheet = Image.new("RGB", (label_w + columns * (cell + pad) + pad, head_h + max(len(rows), 1) * (cell + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for col, (lines, colour) in enumerate(headers):
        for i, line in enumerate(lines):
            draw.text((label_w + pad + col * (cell + pad), pad + i * line_h), line, fill=colour, font=font)
    for row, (style, image) in enumerate(rows):
        y = head_h + pad + row * (cell + pad)
        lines = wrap_text(style or "content", font, label_w - 2 * pad) + wrap_text(image, font, label_w - 2 * pad)
        for i, line in enumerate(lines[:max_label_lines]):
            draw.text((pad, y + 4 + i * line_h), line, fill="#222222", font=font)
        if style is None:
            cells = [None] + [r.content.get(image) for r in revs]
        else:
            content = next((r.content[image] for r in revs if image in r.content), None)
            cells = [content] + [r.images.get((style, image)) for r in revs]
        for col, data in enumerate(cells):
            x = label_w + pad + col * (cell + pad)
            if col == 0 and image in differing:  # each revision's own content is in its content row
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill="#eeeeee")
                for i, line in enumerate(wrap_text("differs between revisions: see its content row", font, cell - 16)):
                    draw.text((x + 8, y + 8 + i * line_h), line, fill="#222222", font=font)
                continue
            if data is None:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill="#eeeeee", outline="#b3261e")
                draw.text((x + 8, y + cell // 2 - 8), "missing", fill="#b3261e", font=font)
                continue
            with Image.open(io.BytesIO(data)) as img:
                # fit the cell both ways: tiny test-sized outputs are enlarged so they can be seen
                scale = cell / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                thumb = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    return sheet
