"""Write ``glyphs_manifest.json``: the fonts, layout, classes and split of :class:`pygml.data.Glyphs`.

Run ``python scripts/make_glyph_manifest.py`` on a Debian machine with the packages ``DEBIAN_PACKAGES``
installed. The rules, applied per variant in this order:

1. **Candidate characters** (``CANDIDATES``): digits, Latin A–Z a–z, Greek capitals and small letters
   (final sigma included), the Russian Cyrillic alphabet (with Ё ё): 177 code points.
2. **Fonts**: every ``.ttf`` / ``.otf`` file of ``DEBIAN_PACKAGES`` under the standard font directories
   (``full``) or in matplotlib's ``mpl-data/fonts/ttf`` (``matplotlib``); a file whose content repeats an
   earlier one is skipped. A font is a candidate if its cmap maps all of A–Z and a–z and it is not one of
   ``NOT_TEXT_FONTS`` (symbol, dingbat and placeholder fonts that map other shapes to Latin code points).
   A font renders a character if its cmap has it and the rendering has ink.
3. **Layout** (``RENDER``): a font is drawn at ``em_px`` pixels per em with its baseline on row
   ``baseline`` of the ``image_size``² box, shrunk (and its baseline moved the least) only if its tallest
   ascent plus deepest descent, or its widest glyph, over the candidate characters would not fit within
   ``margin``. Every character of a font shares that size and baseline: glyphs keep their natural size.
4. **Near-duplicate fonts**: two renderings *coincide* at tolerance ``t`` when
   ``sum|a - b| / (sum a + sum b) < t`` (the share of ink that differs). Fonts are visited by decreasing
   number of characters (then file name); a font is dropped if, against an already kept font, at least
   ``COINCIDE_FRACTION`` of their shared characters coincide at ``FONT_TOLERANCE`` (re-issues of one design:
   TeX Gyre vs URW, Noto Sans Symbols' Latin vs Noto Sans, ...).
5. **Look-alike classes**: code points are visited in candidate order (digits, Latin, Greek, Cyrillic); one
   is dropped if its rendering coincides at ``CLASS_TOLERANCE`` (pixel-identical up to antialiasing) with
   that of an already kept code point in at least ``COINCIDE_FRACTION`` of the fonts having both: Greek Α
   and Cyrillic А go, Latin A stays.
6. **Minimum fonts**: a class rendered by fewer than ``MIN_FONTS[variant]`` fonts is dropped.
7. **Split**: the kept classes in code-point order are permuted with ``numpy.random.default_rng(SPLIT_SEED)``;
   the first ``ceil(C / 2)`` are ``train``, the rest ``test``. The split is stored, not recomputed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import unicodedata
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from fontTools.ttLib import TTFont
from PIL import __version__ as PILLOW_VERSION
from PIL import features

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing pygml
    sys.path.insert(0, str(ROOT))

from pygml.atomic import sha256_file  # noqa: E402
from pygml.data.glyphs import (MANIFEST_PATH, VARIANTS, matplotlib_font_dir, open_font, render_glyphs,  # noqa: E402
                               search_dirs)

CANDIDATES: tuple[int, ...] = (
    *range(0x30, 0x3A),                                   # digits 0-9
    *range(0x41, 0x5B),                                   # Latin A-Z
    *range(0x61, 0x7B),                                   # Latin a-z
    *(cp for cp in range(0x391, 0x3AA) if cp != 0x3A2),   # Greek Α-Ω (U+03A2 is unassigned)
    *range(0x3B1, 0x3CA),                                 # Greek α-ω, final sigma ς included
    0x401, *range(0x410, 0x430),                          # Cyrillic Ё, А-Я
    *range(0x430, 0x450), 0x451,                          # Cyrillic а-я, ё
)
BASIC_LATIN = tuple(range(0x41, 0x5B)) + tuple(range(0x61, 0x7B))
#: fonts whose cmap maps Latin code points to other shapes
NOT_TEXT_FONTS = {
    "D050000L.otf": "URW Dingbats: dingbats at Latin code points",
    "StandardSymbolsPS.otf": "URW Standard Symbols: Greek and math symbols at Latin code points",
    "LastResortHE-Regular.ttf": "Last Resort: one placeholder glyph per Unicode block",
    "cmex10.ttf": "TeX math extension: large delimiters at Latin code points",
    "cmsy10.ttf": "TeX math symbols at Latin code points",
}
#: the Debian packages the ``full`` variant was made from
DEBIAN_PACKAGES = ("fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation2", "fonts-freefont-ttf",
                   "fonts-urw-base35", "fonts-texgyre", "fonts-texgyre-math", "fonts-noto-core", "fonts-noto-mono",
                   "fonts-dkg-handwriting", "fonts-humor-sans", "fonts-rufscript")
RENDER = {"image_size": 32, "em_px": 24.0, "baseline": 24, "margin": 1}
FONT_TOLERANCE = 0.10
CLASS_TOLERANCE = 0.02
COINCIDE_FRACTION = 0.5
MIN_FONTS = {"full": 20, "matplotlib": 10}
SPLIT_SEED = 0


def candidate_files(variant: str) -> list[Path]:
    """Font files of ``variant`` (rule 2), sorted by path, content duplicates and name clashes removed."""
    dirs = [matplotlib_font_dir()] if variant == "matplotlib" else search_dirs("full")
    files = sorted({p.resolve() for d in dirs if d.is_dir() for p in d.rglob("*")
                    if p.is_file() and p.suffix.lower() in (".ttf", ".otf")})
    seen_hash: set[str] = set()
    seen_name: set[str] = set()
    out = []
    for path in files:
        digest = sha256_file(path)
        if digest in seen_hash or path.name in seen_name:
            continue
        seen_hash.add(digest)
        seen_name.add(path.name)
        out.append(path)
    return out


def font_family_style(font: TTFont) -> tuple[str, str]:
    names = font["name"]
    family = names.getDebugName(16) or names.getDebugName(1) or ""
    style = names.getDebugName(17) or names.getDebugName(2) or ""
    return family, style


def fit_layout(path: Path, chars: str) -> tuple[float, int]:
    """Size (pixels per em) and baseline row of a font (rule 3), measured on ``chars``."""
    s, margin, em_px, baseline = RENDER["image_size"], RENDER["margin"], RENDER["em_px"], RENDER["baseline"]
    ref = 1000.0
    font = open_font(path, ref)
    boxes = np.array([font.getbbox(ch, anchor="ls") for ch in chars], dtype=float) / ref
    ascent, descent = max(0.0, -boxes[:, 1].min()), max(0.0, boxes[:, 3].max())
    width = (boxes[:, 2] - boxes[:, 0]).max()
    room = s - 2 * margin
    size = math.floor(min(em_px, room / (ascent + descent), room / width) * 100) / 100
    row = min(max(baseline, margin + ascent * size), s - margin - descent * size)
    return size, int(round(row))


def relative_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum|a - b| / (sum a + sum b)`` over the last two axes (0 where both are empty)."""
    a = a.astype(np.int16)
    b = b.astype(np.int16)
    num = np.abs(a - b).sum(axis=(-2, -1), dtype=np.int64)
    den = a.sum(axis=(-2, -1), dtype=np.int64) + b.sum(axis=(-2, -1), dtype=np.int64)
    return num / np.maximum(den, 1)


def coincidence_fractions(images: np.ndarray, present: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For every pair of classes, over the fonts having both: how many fonts, and the share where the two
    renderings coincide (relative difference < ``tolerance``).

    ``images``: ``uint8 (F, C, S, S)``; ``present``: ``bool (F, C)``. Returns ``(shared, fraction)``, both
    ``(C, C)``; ``fraction`` is 0 where ``shared`` is 0.
    """
    n_fonts, n_classes = present.shape
    shared = np.zeros((n_classes, n_classes), dtype=np.int64)
    same = np.zeros((n_classes, n_classes), dtype=np.int64)
    for f in range(n_fonts):
        idx = np.flatnonzero(present[f])
        x = torch.from_numpy(images[f, idx].reshape(len(idx), -1).astype(np.float32))
        dist = torch.cdist(x, x, p=1).double().numpy()
        ink = x.double().sum(1).numpy()
        rel = dist / np.maximum(ink[:, None] + ink[None, :], 1)
        shared[np.ix_(idx, idx)] += 1
        same[np.ix_(idx, idx)] += rel < tolerance
    fraction = np.divide(same, shared, out=np.zeros(same.shape), where=shared > 0)
    return shared, fraction


def debian_packages(paths: Sequence[Path]) -> dict[str, tuple[str, str]]:
    """``{file name: (package, version)}`` for the ``paths`` dpkg knows (none if dpkg is absent)."""
    try:
        owners = subprocess.run(["dpkg-query", "-S", *map(str, paths)], capture_output=True, text=True).stdout
        by_path = {}
        for line in owners.splitlines():
            package, _, path = line.partition(": ")
            by_path[Path(path).name] = package.split(":")[0]
        listed = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *sorted(set(by_path.values()))],
                                capture_output=True, text=True).stdout
    except OSError:
        return {}
    versions = dict(line.split(" ", 1) for line in listed.splitlines() if " " in line)
    return {name: (package, versions.get(package, "")) for name, package in by_path.items()}


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def build_variant(variant: str) -> dict[str, Any]:
    """The manifest section of ``variant`` (rules 1-7) from the fonts installed here."""
    candidates = "".join(chr(cp) for cp in CANDIDATES)
    fonts: list[dict[str, Any]] = []
    dropped_fonts: list[dict[str, str]] = []
    rendered: dict[str, dict[str, np.ndarray]] = {}
    files = candidate_files(variant)
    owners = {} if variant == "matplotlib" else debian_packages(files)
    for path in files:
        font = TTFont(str(path), lazy=True)
        cmap = font.getBestCmap() or {}
        if path.name in NOT_TEXT_FONTS:
            dropped_fonts.append({"file": path.name, "reason": NOT_TEXT_FONTS[path.name]})
            continue
        if not all(cp in cmap for cp in BASIC_LATIN):
            continue
        if variant == "matplotlib":
            package, pkg_version = "matplotlib", dist_version("matplotlib")
        elif path.name in owners and owners[path.name][0] in DEBIAN_PACKAGES:
            package, pkg_version = owners[path.name]
        else:
            continue
        chars = "".join(ch for ch in candidates if ord(ch) in cmap)
        size, baseline = fit_layout(path, chars)
        images = render_glyphs(path, size, baseline, chars, RENDER["image_size"])
        kept = {ch: img for ch, img in zip(chars, images) if img.any()}
        family, style = font_family_style(font)
        fonts.append({"file": path.name, "family": family, "style": style, "package": package,
                      "package_version": pkg_version, "sha256": sha256_file(path), "size": size, "baseline": baseline})
        rendered[path.name] = kept

    # rule 4: near-duplicate fonts
    fonts.sort(key=lambda e: (-len(rendered[e["file"]]), e["file"]))
    kept_fonts: list[dict[str, Any]] = []
    for entry in fonts:
        mine = rendered[entry["file"]]
        for other in kept_fonts:
            theirs = rendered[other["file"]]
            common = [ch for ch in mine if ch in theirs]
            rel = relative_difference(np.stack([mine[ch] for ch in common]), np.stack([theirs[ch] for ch in common]))
            share = float((rel < FONT_TOLERANCE).mean())
            if share >= COINCIDE_FRACTION:
                dropped_fonts.append({"file": entry["file"], "reason": f"coincides with {other['file']} in "
                                      f"{share:.0%} of {len(common)} shared characters"})
                break
        else:
            kept_fonts.append(entry)
    kept_fonts.sort(key=lambda e: e["file"])

    # rule 5: look-alike classes
    s = RENDER["image_size"]
    images = np.zeros((len(kept_fonts), len(CANDIDATES), s, s), dtype=np.uint8)
    present = np.zeros((len(kept_fonts), len(CANDIDATES)), dtype=bool)
    for f, entry in enumerate(kept_fonts):
        for c, cp in enumerate(CANDIDATES):
            if chr(cp) in rendered[entry["file"]]:
                images[f, c] = rendered[entry["file"]][chr(cp)]
                present[f, c] = True
    shared, fraction = coincidence_fractions(images, present, CLASS_TOLERANCE)
    kept_classes: list[int] = []
    dropped_classes: list[dict[str, str]] = []
    for c, cp in enumerate(CANDIDATES):
        clash = next((k for k in kept_classes if shared[c, k] > 0 and fraction[c, k] >= COINCIDE_FRACTION), None)
        if clash is not None:
            dropped_classes.append({"code_point": f"U+{cp:04X}", "char": chr(cp), "reason": (
                f"pixel-identical to {chr(CANDIDATES[clash])} U+{CANDIDATES[clash]:04X} in {fraction[c, clash]:.0%} "
                f"of {shared[c, clash]} fonts")})
            continue
        n_fonts = int(present[:, c].sum())
        if n_fonts < MIN_FONTS[variant]:
            if n_fonts > 0:
                dropped_classes.append({"code_point": f"U+{cp:04X}", "char": chr(cp),
                                        "reason": f"only {n_fonts} fonts (minimum {MIN_FONTS[variant]})"})
            continue
        kept_classes.append(c)

    # rule 7: split
    order = sorted(kept_classes, key=lambda c: CANDIDATES[c])
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(order))
    n_train = math.ceil(len(order) / 2)
    split_of = {order[i]: ("train" if rank < n_train else "test") for rank, i in enumerate(perm)}
    classes = [{"code_point": f"U+{CANDIDATES[c]:04X}", "char": chr(CANDIDATES[c]),
                "name": unicodedata.name(chr(CANDIDATES[c])), "split": split_of[c],
                "fonts": int(present[:, c].sum())} for c in order]
    kept_chars = {chr(CANDIDATES[c]) for c in order}
    for f, entry in enumerate(kept_fonts):
        entry["chars"] = "".join(chr(cp) for c, cp in enumerate(CANDIDATES) if chr(cp) in kept_chars and present[f, c])
    kept_fonts = [e for e in kept_fonts if e["chars"]]
    packages = {e["package"]: e.pop("package_version") for e in kept_fonts}
    return {
        "font_source": "matplotlib" if variant == "matplotlib" else "system",
        "packages": dict(sorted(packages.items())),
        "min_fonts": MIN_FONTS[variant],
        "num_classes": len(classes),
        "num_fonts": len(kept_fonts),
        "num_images": sum(len(e["chars"]) for e in kept_fonts),
        "split_images": {sp: sum(c["fonts"] for c in classes if c["split"] == sp) for sp in ("train", "test")},
        "classes": classes,
        "fonts": kept_fonts,
        "dropped_classes": dropped_classes,
        "dropped_fonts": sorted(dropped_fonts, key=lambda d: d["file"]),
    }


def build_manifest(variants: Iterable[str] = VARIANTS) -> dict[str, Any]:
    return {
        "format": 1,
        "description": "pygml Glyphs dataset; generated by `python -m pygml.data.make_glyph_manifest`, whose "
                       "docstring states the rules",
        "made_with": {"pillow": PILLOW_VERSION, "freetype": features.version("freetype2")},
        "render": RENDER,
        "rules": {"font_tolerance": FONT_TOLERANCE, "class_tolerance": CLASS_TOLERANCE,
                  "coincide_fraction": COINCIDE_FRACTION, "split_seed": SPLIT_SEED},
        "variants": {v: build_variant(v) for v in variants},
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(MANIFEST_PATH), help="where to write the manifest")
    args = parser.parse_args(argv)
    manifest = build_manifest()
    Path(args.output).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, vm in manifest["variants"].items():
        counts = [c["fonts"] for c in vm["classes"]]
        _log(f"{name}: {vm['num_classes']} classes ({vm['split_images']['train']} train / "
             f"{vm['split_images']['test']} test images), {vm['num_fonts']} fonts, {vm['num_images']} images, "
             f"fonts per class {min(counts)}-{max(counts)} (median {int(np.median(counts))}); dropped "
             f"{len(vm['dropped_classes'])} classes, {len(vm['dropped_fonts'])} fonts")
    _log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
