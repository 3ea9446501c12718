"""Glyphs: characters rendered from real typefaces, one class per character, one image per font.

An Omniglot-like zero-shot retrieval task that builds offline in seconds. Everything that defines the data
is listed in ``glyphs_manifest.json`` (written by ``python scripts/make_glyph_manifest.py``, which
documents the rules that chose its fonts and characters):

- the fonts, by file name, family / style, Debian package and sha256, so two machines render the same
  dataset (a font file whose checksum differs is an error: it would change the images);
- per font the point size, baseline and the exact characters it renders;
- the classes (Unicode code points) and their fixed train / test split.

Rendering: each 32×32 grey image holds one glyph drawn white on black at the font's fixed size and
baseline, centred horizontally. Glyphs keep their natural size (``o`` is smaller than ``O``): a font's size is
the same for every character. Images are rendered once and cached under the data root as
``glyphs-<variant>-<key>.npz``, ``key`` a hash of the manifest, the render code version and the Pillow /
FreeType versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features
from PIL import __version__ as PILLOW_VERSION

from pygml.atomic import sha256_file
from pygml.data.base import GrayImages, Transform

MANIFEST_PATH = Path(__file__).with_name("glyphs_manifest.json")
VARIANTS = ("full", "matplotlib")
#: where the ``full`` variant looks for font files (recursively), besides any ``font_dirs`` given
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/usr/share/texmf/fonts",
                    "~/.local/share/fonts", "~/.fonts")
#: bump when the rendering code changes, so old caches are not reused
RENDER_VERSION = 1


class GlyphFontsError(FileNotFoundError):
    """Font files of the manifest are missing or differ from it; the message says how to get them."""


def matplotlib_font_dir() -> Path:
    """``matplotlib/mpl-data/fonts/ttf`` of the installed matplotlib (found without importing it)."""
    spec = find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise GlyphFontsError("the 'matplotlib' glyphs variant needs matplotlib's bundled fonts: "
                              "pip install matplotlib")
    return Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"


@lru_cache(maxsize=4)
def _load_manifest_cached(path: str, mtime: float) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_manifest(path: str | Path = MANIFEST_PATH) -> dict[str, Any]:
    """The parsed manifest (see the module docstring); raises ``FileNotFoundError`` naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"glyph manifest not found: {path}; regenerate it with "
                                "`python scripts/make_glyph_manifest.py` (from a clone of the repository)")
    return _load_manifest_cached(str(path), path.stat().st_mtime)


def variant_manifest(variant: str, manifest: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The section of ``manifest`` (default: the packaged one) for ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"glyphs variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    manifest = load_manifest() if manifest is None else manifest
    return manifest["variants"][variant]


def code_point_label(cp: int) -> str:
    """``U+0041 A``: how classes are named."""
    return f"U+{cp:04X} {chr(cp)}"


def parse_code_point(text: str) -> int:
    """``"U+0041"`` → ``0x41``."""
    if not text.startswith("U+"):
        raise ValueError(f"code point must look like U+0041, got {text!r}")
    return int(text[2:], 16)


def open_font(path: str | Path, size: float) -> ImageFont.FreeTypeFont:
    """A FreeType font at ``size`` pixels per em, with Pillow's basic layout (no shaping library needed)."""
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


def render_glyphs(font_path: str | Path, size: float, baseline: int, chars: Sequence[str],
                  image_size: int = 32) -> np.ndarray:
    """Render ``chars`` of one font, each alone in an ``image_size``² box.

    Every glyph is drawn at the same ``size`` (pixels per em) with its baseline at row ``baseline``, and
    centred horizontally on its ink box: relative sizes and vertical positions of the characters of a font
    are kept (no per-glyph stretching).

    Returns a ``uint8`` array ``(len(chars), image_size, image_size)``, ink 255 on background 0.
    """
    font = open_font(font_path, size)
    out = np.zeros((len(chars), image_size, image_size), dtype=np.uint8)
    for i, ch in enumerate(chars):
        left, _, right, _ = font.getbbox(ch, anchor="ls")
        x = (image_size - (right - left)) // 2 - left
        image = Image.new("L", (image_size, image_size), 0)
        ImageDraw.Draw(image).text((x, baseline), ch, font=font, fill=255, anchor="ls")
        out[i] = np.asarray(image)
    return out


def _font_index(dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """Font files under ``dirs`` (recursively) by file name."""
    found: dict[str, list[Path]] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for dirpath, _, files in os.walk(d, followlinks=True):
            for f in files:
                if f.lower().endswith((".ttf", ".otf")):
                    found.setdefault(f, []).append(Path(dirpath) / f)
    return found


def search_dirs(variant: str, font_dirs: Optional[Sequence[str | Path]] = None) -> list[Path]:
    """Where the fonts of ``variant`` are looked for: ``font_dirs`` if given, else the standard places."""
    if font_dirs is not None:
        return [Path(d).expanduser() for d in font_dirs]
    if variant == "matplotlib":
        return [matplotlib_font_dir()]
    return [Path(d).expanduser() for d in SYSTEM_FONT_DIRS]


def locate_fonts(variant: str, font_dirs: Optional[Sequence[str | Path]] = None, strict: bool = True,
                 manifest: Optional[dict[str, Any]] = None) -> list[tuple[dict[str, Any], Path]]:
    """Find each manifest font of ``variant`` by file name and check its sha256.

    Returns ``(font entry, path)`` pairs in manifest order. With ``strict=True`` any missing or differing
    file raises :class:`GlyphFontsError` listing them and saying how to install them; with
    ``strict=False`` they are left out with a warning.
    """
    vm = variant_manifest(variant, manifest)
    dirs = search_dirs(variant, font_dirs)
    index = _font_index(dirs)
    found: list[tuple[dict[str, Any], Path]] = []
    missing: list[dict[str, Any]] = []
    differing: list[tuple[dict[str, Any], list[Path]]] = []
    for entry in vm["fonts"]:
        paths = sorted(index.get(entry["file"], []))
        match = next((p for p in paths if sha256_file(p) == entry["sha256"]), None)
        if match is not None:
            found.append((entry, match))
        elif paths:
            differing.append((entry, paths))
        else:
            missing.append(entry)
    if missing or differing:
        message = _fonts_problem_message(variant, vm, dirs, missing, differing, len(vm["fonts"]))
        if strict:
            raise GlyphFontsError(message + " Or pass strict=False (data.strict_fonts=false) to build from the "
                                  "fonts that match, which gives a different dataset.")
        warnings.warn(message + f" Building from the {len(found)} fonts that match (strict=False).", stacklevel=2)
    return found


def _fonts_problem_message(variant: str, vm: dict[str, Any], dirs: Sequence[Path],
                           missing: list[dict[str, Any]], differing: list[tuple[dict[str, Any], list[Path]]],
                           total: int) -> str:
    where = ", ".join(str(d) for d in dirs)
    parts = [f"glyphs variant {variant!r} (fonts listed in {MANIFEST_PATH}, looked for under {where}):"]
    if missing:
        packages = ", ".join(sorted({e["package"] for e in missing}))
        names = ", ".join(e["file"] for e in missing[:12]) + (", ..." if len(missing) > 12 else "")
        parts.append(f"{len(missing)} of the {total} font files are missing ({names}; from {packages}).")
    if differing:
        shown = "; ".join(f"{paths[0]} has sha256 {sha256_file(paths[0])[:12]}…, the manifest {e['sha256'][:12]}… "
                          f"({e['package']} {vm['packages'][e['package']]})" for e, paths in differing[:6])
        more = "; ..." if len(differing) > 6 else ""
        parts.append(f"{len(differing)} font files differ from the manifest, which would change the images: "
                     f"{shown}{more}.")
    if variant == "matplotlib":
        parts.append(f"These fonts ship inside matplotlib's wheel: install matplotlib=={vm['packages']['matplotlib']}, "
                     "the version the manifest was made with.")
    else:
        versions = ", ".join(f"{p} {v}" for p, v in vm["packages"].items())
        parts.append(f"Install the Debian packages: `sudo apt-get update && sudo apt-get install -y "
                     f"{' '.join(vm['packages'])}` (the manifest was made with {versions}), or use the variant that "
                     "needs only matplotlib: variant='matplotlib' (data.name=glyphs_matplotlib).")
    return " ".join(parts)


def manifest_key(variant: str, manifest: Optional[dict[str, Any]] = None,
                 fonts: Optional[Sequence[str]] = None) -> str:
    """Hash of what determines the rendered arrays (used to name the cache file)."""
    manifest = load_manifest() if manifest is None else manifest
    payload = {
        "render": manifest["render"], "variant": manifest["variants"][variant], "fonts": fonts,
        "render_version": RENDER_VERSION, "pillow": PILLOW_VERSION, "freetype": features.version("freetype2"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class GlyphArrays:
    """All rendered images of a variant. ``images``: ``uint8 (N, S, S)``; ``code_points``: ``int64 (N,)``;
    ``font_index``: ``int64 (N,)`` into ``font_names``."""

    images: np.ndarray
    code_points: np.ndarray
    font_index: np.ndarray
    font_names: list[str]


def render_variant(fonts: Sequence[tuple[dict[str, Any], Path]], image_size: int, progress: bool = True) -> GlyphArrays:
    """Render every (font, character) pair listed in the manifest entries ``fonts``."""
    from tqdm.auto import tqdm

    images, cps, font_idx = [], [], []
    for i, (entry, path) in enumerate(tqdm(fonts, desc="rendering glyphs", unit="font", disable=not progress)):
        chars = entry["chars"]
        arr = render_glyphs(path, entry["size"], entry["baseline"], chars, image_size)
        blank = [ch for ch, a in zip(chars, arr) if not a.any()]
        if blank:
            raise ValueError(f"font {path} rendered no ink for {''.join(blank)!r}, which the manifest lists for it; "
                             f"this Pillow/FreeType ({PILLOW_VERSION}/{features.version('freetype2')}) cannot "
                             "render it")
        images.append(arr)
        cps.extend(ord(ch) for ch in chars)
        font_idx.extend([i] * len(chars))
    return GlyphArrays(images=np.concatenate(images) if images else np.zeros((0, image_size, image_size), np.uint8),
                       code_points=np.asarray(cps, dtype=np.int64), font_index=np.asarray(font_idx, dtype=np.int64),
                       font_names=[entry["file"] for entry, _ in fonts])


def _read_cache(path: Path, key: str) -> Optional[GlyphArrays]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return GlyphArrays(images=z["images"], code_points=z["code_points"].astype(np.int64),
                               font_index=z["font_index"].astype(np.int64),
                               font_names=[str(s) for s in z["font_names"]])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"ignoring unreadable glyph cache {path} ({exc}); rendering again", stacklevel=3)
        return None


def _write_cache(path: Path, key: str, arrays: GlyphArrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, key=np.asarray(key), images=arrays.images, code_points=arrays.code_points,
                            font_index=arrays.font_index, font_names=np.asarray(arrays.font_names, dtype=str))
    os.replace(tmp, path)


def _check_cache_dir(root: Path) -> None:
    """A glyphs root is a cache of rendered glyphs: a directory holding anything else is someone's data,
    named as the glyphs root by mistake (e.g. an image folder given without its dataset name)."""
    if not root.is_dir():
        return
    foreign = sorted(p.name for p in root.iterdir() if not p.name.startswith("glyphs-"))
    if foreign:
        raise ValueError(f"the glyphs data root {root} holds files that are not glyph caches ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}): it is another dataset's folder. Name that dataset "
                         "(data.name=folder, csv, cub, ...), or give the glyphs a root of their own")


def build_glyph_arrays(root: str | Path, variant: str = "full", *, strict: bool = True,
                       font_dirs: Optional[Sequence[str | Path]] = None, progress: bool = True,
                       manifest: Optional[dict[str, Any]] = None) -> tuple[GlyphArrays, Path]:
    """Render (or load from the cache under ``root``) every image of ``variant``; return it and the cache path.

    The cache is read without looking at the fonts; the fonts are located and checked only to render.
    """
    manifest = load_manifest() if manifest is None else manifest
    vm = variant_manifest(variant, manifest)
    root = Path(root)
    _check_cache_dir(root)

    def cached(fonts: Optional[list[str]] = None) -> tuple[Path, str, Optional[GlyphArrays]]:
        key = manifest_key(variant, manifest, fonts)
        path = root / f"glyphs-{variant}-{key}.npz"
        return path, key, (_read_cache(path, key) if path.is_file() else None)

    cache, key, arrays = cached()
    if arrays is not None:
        return arrays, cache
    fonts = locate_fonts(variant, font_dirs, strict, manifest)
    if len(fonts) < len(vm["fonts"]):
        cache, key, arrays = cached([entry["file"] for entry, _ in fonts])
        if arrays is not None:
            return arrays, cache
    arrays = render_variant(fonts, manifest["render"]["image_size"], progress)
    if len(fonts) == len(vm["fonts"]) and len(arrays.code_points) != vm["num_images"]:
        raise ValueError(f"rendering variant {variant!r} gave {len(arrays.code_points)} images; the manifest "
                         f"{MANIFEST_PATH} lists {vm['num_images']}")
    _write_cache(cache, key, arrays)
    return arrays, cache


class Glyphs(GrayImages):
    """Characters rendered from real fonts: one class per character, one image per font (zero-shot split).

    Classes are digits and Latin, Greek and Cyrillic letters; look-alikes across scripts (Latin ``A`` / Greek
    ``Α`` / Cyrillic ``А``, ``o`` / ``ο`` / ``о``, ...) were removed when the manifest was made: a code point is
    dropped when its rendering is pixel-identical to that of an earlier-kept one (digits, then Latin, Greek,
    Cyrillic) in at least half of the fonts that have both. The fixed split (a seeded permutation of the
    classes, stored in the manifest) puts half of the classes in ``train`` and the other half in ``test``.

    Sizes (the packaged manifest: Debian 12 packages fonts-dejavu-core/-extra, fonts-liberation2,
    fonts-freefont-ttf, fonts-urw-base35, fonts-texgyre(-math), fonts-noto-core/-mono, fonts-dkg-handwriting,
    fonts-humor-sans, fonts-rufscript; matplotlib 3.11's bundled fonts), measured on 2 CPU cores:

    - ``full``: 143 classes (72 train / 71 test), 114 fonts, 92–114 fonts per class (median 107),
      15,030 images (7,546 train / 7,484 test); first build ~1.7 s (up to ~5 s on busy cores), cached load
      ~0.1 s, cache file 2 MB.
    - ``matplotlib``: 143 classes (72 / 71), 22 fonts, 16–22 fonts per class, 2,660 images
      (1,338 / 1,322); first build ~0.5 s.

    For scale: nearest neighbour on raw pixels (cosine of mean-centred images) scores Recall@1 0.89 and
    MAP@R 0.32 on the ``full`` test split (0.75 / 0.34 on ``matplotlib``).

    Args:
        root: directory of the render cache (created if needed).
        split: ``"train"`` or ``"test"``.
        transform: applied to the PIL image (RGB, 32×32, white glyph on black).
        variant: ``"full"`` (Debian font packages) or ``"matplotlib"`` (only the fonts inside matplotlib's
            wheel: no system package needed; fewer fonts per class).
        strict: a missing font, or one whose sha256 differs from the manifest, is an error
            (:class:`GlyphFontsError`, saying which ``apt-get install`` fixes it); ``False`` builds from the
            fonts that match, with a warning.
        font_dirs: look for the font files here instead of the standard places.
        progress: show a progress bar while rendering.

    Attributes: ``images`` (``uint8 (N, 32, 32)``), ``labels`` (``int64 (N,)``, ``0 .. C-1``),
    ``code_points`` (``C`` ints, ``code_points[c]`` is class ``c``), ``font_index`` (``int64 (N,)``) into
    ``font_names``, ``class_names`` (``"U+0041 A"``), ``cache_path``.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Transform = None, *, variant: str = "full",
                 strict: bool = True, font_dirs: Optional[Sequence[str | Path]] = None, progress: bool = True):
        if split not in ("train", "test"):
            raise ValueError(f"Glyphs split must be 'train' or 'test', got {split!r}")
        manifest = load_manifest()
        vm = variant_manifest(variant, manifest)
        arrays, self.cache_path = build_glyph_arrays(root, variant, strict=strict, font_dirs=font_dirs,
                                                     progress=progress, manifest=manifest)
        wanted = sorted(parse_code_point(c["code_point"]) for c in vm["classes"] if c["split"] == split)
        present = set(np.unique(arrays.code_points).tolist())
        absent = [cp for cp in wanted if cp not in present]
        if absent:
            if strict:
                raise ValueError(f"the glyph cache {self.cache_path} lacks classes {absent} of the manifest; delete it")
            warnings.warn(f"glyphs {split}: no font left for {len(absent)} classes "
                          f"({''.join(chr(c) for c in absent)}); they are left out", stacklevel=2)
        self.code_points = [cp for cp in wanted if cp in present]
        label_of = {cp: i for i, cp in enumerate(self.code_points)}
        keep = np.isin(arrays.code_points, self.code_points)
        self.font_index = arrays.font_index[keep]
        self.font_names = arrays.font_names
        labels = np.asarray([label_of[cp] for cp in arrays.code_points[keep].tolist()], dtype=np.int64)
        super().__init__(arrays.images[keep], labels, [code_point_label(cp) for cp in self.code_points], transform)
        self.name = "glyphs" if variant == "full" else "glyphs_matplotlib"
        self.split = split
        self.variant = variant
