"""What the tools show people: self-contained HTML pages and image grids of retrieval results.

A page embeds its images as ``data:`` URIs, so it is one file that opens offline, from anywhere. A small
script marks, once the page has loaded, how many of its images loaded (``data-images-loaded`` and
``data-images-broken`` on ``<body>``) and shows a banner when one did not.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from pygml.atomic import atomic_path

#: frame colours: a neighbour of the query's class, of another class (the plots use the same)
HIT, MISS, UNKNOWN = "#1a9850", "#d73027", "#9e9e9e"

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table.metrics { border-collapse: collapse; } table.metrics td, table.metrics th { padding: 3px 12px;
  border-bottom: 1px solid #eee; text-align: right; } table.metrics td:first-child, table.metrics th:first-child {
  text-align: left; }
.row { display: flex; gap: 6px; align-items: flex-start; margin: 8px 0 14px; flex-wrap: wrap; }
figure { margin: 0; width: 104px; text-align: center; font-size: 11px; }
figure img { width: 98px; height: 98px; object-fit: contain; background: #f4f4f4; border: 3px solid #ddd; }
figure.query img { border-color: #333; } figure.hit img { border-color: #1a9850; }
figure.miss img { border-color: #d73027; } figure.hit figcaption b { color: #1a9850; }
figure.miss figcaption b { color: #d73027; }
figcaption { overflow-wrap: anywhere; } .note { color: #555; font-size: 13px; }
pre { background: #f6f6f6; padding: 10px; font-size: 12px; overflow-x: auto; }
#broken { display: none; background: #fdecea; color: #a12; padding: 8px; margin-bottom: 12px; }
"""

CHECK_IMAGES = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok);
  document.body.setAttribute("data-images-broken", images.length - ok);
  if (ok < images.length) {
    var b = document.getElementById("broken");
    b.textContent = (images.length - ok) + " of " + images.length + " images failed to load";
    b.style.display = "block";
  }
});
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(path: str | Path) -> str:
    return data_uri(Path(path).read_bytes(), "image/png")


def thumbnail(image: Optional[Image.Image], side: int = 112) -> Optional[Image.Image]:
    """A copy of ``image`` scaled to fit ``side`` × ``side`` (``None`` stays ``None``: an image that cannot be read)."""
    if image is None:
        return None
    return ImageOps.contain(image.convert("RGB"), (side, side))


def image_uri(image: Optional[Image.Image], side: int = 112) -> Optional[str]:
    """A JPEG thumbnail of ``image`` as a data URI (``None`` for an image that cannot be read)."""
    small = thumbnail(image, side)
    if small is None:
        return None
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


@dataclass
class Tile:
    """One image of a retrieval row: the image (``None``: unreadable), its caption lines, and whether it is a
    hit (``True``), a miss (``False``), unknown (``None``) or the query (``query=True``)."""

    image: Optional[Image.Image]
    caption: Sequence[str]
    hit: Optional[bool] = None
    query: bool = False


def figure(tile: Tile) -> str:
    cls = "query" if tile.query else {True: "hit", False: "miss", None: ""}[tile.hit]
    mark = {True: "✓ hit", False: "✗ miss", None: ""}[None if tile.query else tile.hit]
    uri = image_uri(tile.image)
    img = f'<img src="{uri}" alt="{esc(tile.caption[0] if tile.caption else "")}">' if uri else \
        '<div class="note">(cannot be read)</div>'
    lines = ([f"<b>{mark}</b>"] if mark else []) + [esc(line) for line in tile.caption]
    return f'<figure class="{cls}">{img}<figcaption>{"<br>".join(lines)}</figcaption></figure>'


def row(tiles: Sequence[Tile]) -> str:
    return '<div class="row">' + "".join(figure(t) for t in tiles) + "</div>"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "metrics") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page(title: str, body: str) -> str:
    """A whole HTML page: ``body`` (HTML) under ``title``, with the style and the image check."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><div id="broken"></div><h1>{esc(title)}</h1>\n{body}\n<script>{CHECK_IMAGES}</script></body></html>\n')


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a bitmap font of one size
        return ImageFont.load_default()


def retrieval_grid(rows: Sequence[Sequence[Tile]], path: str | Path, side: int = 96) -> Path:
    """A PNG of retrieval rows (each: the query tile, then its results), every image framed by its status
    (query dark, hit green, miss red, unknown grey) and captioned; written atomically."""
    font = _font(10)
    line, pad, frame = 12, 6, 3
    lines = max((len(t.caption) for r in rows for t in r), default=0) + 1
    cell_w, cell_h = side + 2 * frame + pad, side + 2 * frame + lines * line + pad
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * cell_w + pad, len(rows) * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            x, y = pad + c * cell_w, pad + r * cell_h
            colour = "#333333" if tile.query else {True: HIT, False: MISS, None: UNKNOWN}[tile.hit]
            draw.rectangle([x, y, x + side + 2 * frame - 1, y + side + 2 * frame - 1], fill=colour)
            draw.rectangle([x + frame, y + frame, x + frame + side - 1, y + frame + side - 1], fill="#f4f4f4")
            small = thumbnail(tile.image, side)
            if small is not None:
                canvas.paste(small, (x + frame + (side - small.width) // 2, y + frame + (side - small.height) // 2))
            else:
                draw.text((x + frame + 4, y + frame + side // 2 - 6), "unreadable", fill=MISS, font=font)
            mark = "" if tile.query else {True: "hit", False: "miss", None: ""}[tile.hit]
            text = [mark] if mark else []
            for i, caption in enumerate(text + [str(s) for s in tile.caption]):
                fitted = caption if draw.textlength(caption, font=font) <= side + 2 * frame else \
                    "…" + caption[-max(1, int(len(caption) * (side + 2 * frame) / draw.textlength(caption, font=font)) - 2):]
                draw.text((x, y + side + 2 * frame + 2 + i * line), fitted, fill="#222222", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


__all__ = ["HIT", "MISS", "Tile", "data_uri", "esc", "figure", "image_uri", "page", "png_uri", "retrieval_grid",
           "row", "table", "thumbnail", "write_text"]
