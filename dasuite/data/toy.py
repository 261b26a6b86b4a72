"""Toy street scenes: a synthetic -> real domain-adaptation problem that is generated on the fly and runs anywhere.

Every item is drawn from a numpy RNG seeded with ``(seed, domain, split, index)``, so it is deterministic, and the
three splits are disjoint streams. Both domains sample the *same* layout distribution (horizon, road trapezoid in
perspective, sidewalks, a street canyon of buildings and tree rows, trees, poles, cars and people painted far to
near so nearer objects occlude farther ones); only the appearance differs:

- ``synthetic``: flat, saturated per-class colours, sharp edges, almost no noise (a game render);
- ``real``: shifted / desaturated colours with wide per-instance variation (cars and clothes of any colour),
  textures (windows, asphalt, foliage, lane marks), cast and car shadows, a per-image gain, gamma and colour cast,
  blur and sensor noise. Colour alone therefore transfers poorly; layout and shape transfer.

Labels are Cityscapes train ids (class table ``CITYSCAPES``); the classes used are road, sidewalk, building,
pole, vegetation, sky, person and car.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from PIL import Image
from pydantic import Field

from dasuite.data.base import DATASETS, DatasetConfig, SegDataset
from dasuite.data.io import make_item, resize_image, resize_label
from dasuite.data.labels import CITYSCAPES

ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 8, 10, 11, 13
TOY_CLASSES = (ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR)
_DOMAIN_IDS = {"synthetic": 0, "real": 1}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_NUM_IMAGES = {"train": 200, "val": 40, "test": 40}


class ToyConfig(DatasetConfig):
    """Options of the ``toy`` dataset; ``size`` is the generated (width, height); ``root`` is unused."""

    name: Literal["toy"] = "toy"
    """Selects this dataset (``dasuite list datasets``)."""
    domain: Literal["synthetic", "real"] = "synthetic"
    """Appearance: ``synthetic`` (flat colours, a game render) or ``real`` (textures, shadows, noise)."""
    split: Literal["train", "val", "test"] = "train"
    """Stream of scenes to draw (the three splits are disjoint)."""
    num_images: Optional[int] = Field(None, gt=0)
    """Number of generated images; null = 200 for ``train``, 40 for ``val`` and ``test``."""
    size: tuple[int, int] = (128, 96)
    """Generated (width, height) in pixels."""
    seed: int = 0
    """Seed of the generated scenes (independent of the experiment seed)."""


class _Scene:
    """An instance map being painted: ``inst`` HxW ids; per id a class and a part name (appearance keys)."""

    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.inst = np.zeros((h, w), np.int32)
        self.cls = [SKY]
        self.part = ["sky"]
        self.shadows: list[tuple[float, float, float, float]] = []  # (cx, cy, rx, ry) under cars
        self.horizon, self.vanish_x = 0.0, 0.0

    def new(self, cls: int, part: str) -> int:
        self.cls.append(cls)
        self.part.append(part)
        return len(self.cls) - 1

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        """Pixel bounds (xa, xb, ya, yb) of a float box, clipped, at least one pixel wide where visible."""
        xa, ya = min(max(round(x0), 0), self.w), min(max(round(y0), 0), self.h)
        xb, yb = min(max(round(x1), xa + 1), self.w), min(max(round(y1), ya + 1), self.h)
        return xa, xb, ya, yb

    def rect(self, x0: float, y0: float, x1: float, y1: float, cls: int, part: str) -> None:
        xa, xb, ya, yb = self._box(x0, y0, x1, y1)
        self.inst[ya:yb, xa:xb] = self.new(cls, part)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, cls: int, part: str) -> None:
        xa, xb, ya, yb = self._box(cx - rx, cy - ry, cx + rx, cy + ry)
        yy = (np.arange(ya, yb)[:, None] + 0.5 - cy) / max(ry, 0.5)
        xx = (np.arange(xa, xb)[None, :] + 0.5 - cx) / max(rx, 0.5)
        self.inst[ya:yb, xa:xb][yy**2 + xx**2 <= 1.0] = self.new(cls, part)


def _layout(rng: np.random.Generator, w: int, h: int) -> _Scene:
    """Sample a street layout (same distribution for both domains)."""
    s = _Scene(w, h)
    yh, vx = h * rng.uniform(0.36, 0.5), w * rng.uniform(0.35, 0.65)  # horizon row, vanishing point column
    s.horizon, s.vanish_x = yh, vx
    rb, sb = w * rng.uniform(0.28, 0.5), w * rng.uniform(0.15, 0.3)  # road half-width, sidewalk width at bottom
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    # Background: blocks of buildings / tree rows whose tops rise away from the vanishing point.
    col_inst, top, x = np.zeros(w, np.int32), np.zeros(w), 0
    while x < w:
        bw = max(2, int(w * rng.uniform(0.06, 0.2)))
        cols = np.arange(x, min(w, x + bw)) + 0.5
        veg = rng.random() < 0.25
        col_inst[x : x + bw] = s.new(VEGETATION if veg else BUILDING, "block")
        rise = h * rng.uniform(0.05, 0.22) * (0.4 + 2.2 * np.abs(cols - vx) / w)
        if veg:
            rise = rise * 0.6 + h * 0.03 * np.sin(cols * rng.uniform(0.3, 0.8) + rng.uniform(0, 6))
        top[x : x + bw] = yh - rise
        x += bw
    s.inst = np.where(ys >= top[None, :], col_inst[None, :], 0).astype(np.int32)
    t = np.clip((ys - yh) / (h - yh), 0.0, None)
    dx = np.abs(xs - vx)
    road = (ys >= yh) & (dx <= rb * t)
    walk = (ys >= yh) & (dx <= (rb + sb) * t) & ~road
    s.inst[road] = s.new(ROAD, "road")
    s.inst[walk & (xs < vx)] = s.new(SIDEWALK, "walk")
    s.inst[walk & (xs >= vx)] = s.new(SIDEWALK, "walk")

    # Objects, painted far (small base row) to near.
    objects: list[tuple[float, str, float]] = []  # (base row, kind, x)
    for kind, lo, hi in (("tree", 0, 3), ("pole", 1, 4), ("car", 0, 5), ("person", 0, 5)):
        for _ in range(int(rng.integers(lo, hi + 1))):
            tb = rng.uniform(0.15, 1.05)
            side = rng.choice((-1.0, 1.0))
            if kind == "car":
                off = rng.uniform(-0.75, 0.75) * rb
            elif kind == "person" and rng.random() < 0.2:
                off = rng.uniform(-0.9, 0.9) * rb  # crossing the road
            else:
                lo_f, hi_f = {"tree": (0.5, 0.9), "pole": (0.6, 0.95), "person": (0.1, 0.9)}[kind]
                off = side * (rb + sb * rng.uniform(lo_f, hi_f))
            objects.append((yh + tb * (h - yh), kind, vx + off * tb))
    for base, kind, cx in sorted(objects):
        t0 = (base - yh) / (h - yh)
        if kind == "tree":
            tw, th = max(1.0, 0.025 * w * t0), 0.3 * h * t0
            s.rect(cx - tw / 2, base - th, cx + tw / 2, base, VEGETATION, "trunk")
            s.ellipse(cx, base - th, 0.12 * w * t0 * rng.uniform(0.8, 1.2), 0.12 * h * t0, VEGETATION, "crown")
        elif kind == "pole":
            pw, ph = max(1.0, 0.014 * w * t0), 0.7 * h * t0 * rng.uniform(0.8, 1.1)
            s.rect(cx - pw / 2, base - ph, cx + pw / 2, base, POLE, "pole")
            if rng.random() < 0.5:  # street-light arm reaching over the road
                arm = 0.1 * w * t0 * (1.0 if cx < vx else -1.0)
                s.rect(min(cx, cx + arm), base - ph, max(cx, cx + arm), base - ph + pw, POLE, "pole")
        elif kind == "car":
            cw = 0.42 * w * t0 * rng.uniform(0.85, 1.1)
            ch = cw * rng.uniform(0.5, 0.65)
            s.shadows.append((cx, base - 0.05 * ch, 0.6 * cw, 0.12 * ch))
            s.rect(cx - cw / 2, base - 0.62 * ch, cx + cw / 2, base - 0.12 * ch, CAR, "car")
            s.rect(cx - 0.36 * cw, base - ch, cx + 0.36 * cw, base - 0.6 * ch, CAR, "car")
            s.rect(cx - 0.3 * cw, base - 0.93 * ch, cx + 0.3 * cw, base - 0.64 * ch, CAR, "window")
            for wx in (-0.32, 0.32):
                s.ellipse(cx + wx * cw, base - 0.12 * ch, 0.11 * cw, 0.12 * ch, CAR, "wheel")
        else:
            ph = 0.42 * h * t0 * rng.uniform(0.85, 1.1)
            pw = 0.28 * ph
            for lx in (-0.2, 0.2):
                s.rect(cx + lx * pw - 0.17 * pw, base - 0.46 * ph, cx + lx * pw + 0.17 * pw, base, PERSON, "legs")
            s.rect(cx - pw / 2, base - 0.82 * ph, cx + pw / 2, base - 0.42 * ph, PERSON, "torso")
            s.ellipse(cx, base - 0.9 * ph, 0.1 * ph, 0.1 * ph, PERSON, "skin")
    return s


# Per-part base colours (RGB). Synthetic: one saturated colour per part. Real: a list of typical colours, one
# chosen per instance, then jittered widely.
_SYNTHETIC = {
    "sky": (70, 140, 240), "road": (120, 60, 140), "walk": (235, 70, 200), "block": (190, 95, 60),
    "trunk": (120, 70, 30), "crown": (60, 175, 45), "pole": (240, 215, 40), "car": (25, 35, 205),
    "window": (20, 20, 70), "wheel": (15, 15, 15), "legs": (70, 40, 130), "torso": (225, 25, 60),
    "skin": (240, 185, 150),
}
_REAL = {
    "sky": ((190, 205, 225), (215, 215, 220), (150, 175, 210)), "road": ((95, 95, 100), (80, 78, 75)),
    "walk": ((150, 142, 132), (125, 125, 128)), "trunk": ((70, 60, 50),), "crown": ((70, 92, 48), (55, 75, 45)),
    "block": ((150, 150, 148), (140, 88, 70), (180, 165, 135), (75, 75, 82), (120, 110, 100)),
    "pole": ((90, 90, 92), (60, 70, 62), (130, 130, 125)),
    "car": ((220, 220, 222), (30, 30, 34), (160, 162, 165), (150, 30, 30), (40, 60, 120), (110, 100, 80)),
    "window": ((40, 45, 55), (70, 80, 95)), "wheel": ((22, 22, 22),), "skin": ((200, 160, 130), (120, 85, 60)),
    "legs": ((40, 40, 60), (90, 80, 70), (30, 30, 30)),
    "torso": ((200, 200, 200), (40, 40, 45), (150, 40, 40), (60, 90, 60), (170, 140, 90), (50, 70, 130)),
}
# Probability that a real instance takes a typical real-world colour instead of the shifted synthetic one.
_REAL_SWAP = {"block": 0.5, "car": 0.6, "torso": 0.6, "legs": 0.5, "pole": 0.4, "road": 0.15, "walk": 0.15, "sky": 0.15}


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cell: int) -> np.ndarray:
    """Zero-mean, unit-ish HxW noise that varies over about ``cell`` pixels (bilinear upsampled)."""
    small = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR))


_NOISE_BANK = np.random.default_rng(20240611).standard_normal((320, 320, 3), dtype=np.float32)


def _noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Unit Gaussian HxWx3 float32 noise: a random window of a fixed bank (cheap), fresh samples if larger."""
    bh, bw = _NOISE_BANK.shape[:2]
    if h > bh or w > bw:
        return rng.standard_normal((h, w, 3), dtype=np.float32)
    y, x = int(rng.integers(bh - h + 1)), int(rng.integers(bw - w + 1))
    return _NOISE_BANK[y : y + h, x : x + w]


def _render_synthetic(s: _Scene, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    colors = np.array([_SYNTHETIC[p] for p in s.part], np.float32)
    colors += rng.uniform(-8, 8, size=(len(colors), 1)).astype(np.float32)
    img = colors[s.inst]
    img += 1.5 * _noise(rng, s.w, s.h)
    return np.clip(img, 0, 255).astype(np.uint8)


def _real_colors(s: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Per-instance base colours: the synthetic colour desaturated and shifted, or (for parts that vary in the
    real world, e.g. car paint and clothes) often a typical real-world colour instead; then jittered."""
    syn = np.array([_SYNTHETIC[p] for p in s.part], np.float32)
    grey = syn.mean(axis=1, keepdims=True)
    sat = rng.uniform(0.35, 0.75, size=(len(syn), 1)).astype(np.float32)
    colors = grey + sat * (syn - grey) + rng.normal(0, 12, size=syn.shape).astype(np.float32)
    typical = np.array([_REAL[p][rng.integers(len(_REAL[p]))] for p in s.part], np.float32)
    swap = rng.random(len(syn)) < np.array([_REAL_SWAP.get(p, 0.0) for p in s.part])
    colors[swap] = typical[swap]
    return colors * rng.uniform(0.8, 1.2, size=(len(syn), 1)).astype(np.float32)


def _render_real(s: _Scene, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w, h = s.w, s.h
    img = _real_colors(s, rng)[s.inst]
    ys, xs = np.arange(h, dtype=np.float32)[:, None] + 0.5, np.arange(w, dtype=np.float32)[None, :] + 0.5
    gain = np.ones((h, w), np.float32)
    # Textures: window grid on buildings, blotchy foliage, asphalt grain, sky gradient.
    win = ((xs * rng.uniform(0.12, 0.2)) % 1.0 < 0.45) & ((ys * rng.uniform(0.1, 0.16)) % 1.0 < 0.5)
    gain[(label == BUILDING) & win] *= rng.uniform(0.45, 0.75)
    gain += np.where(label == VEGETATION, 0.22, 0.05) * _smooth_noise(rng, w, h, 3)
    sky = label == SKY
    gain[sky] *= (0.85 + 0.3 * np.broadcast_to(ys / h, (h, w)))[sky]
    # Dashed lane mark in the road centre, and shadows (a cast-shadow half-plane and car shadows).
    road = label == ROAD
    t = np.clip((ys - s.horizon) / (h - s.horizon), 0.0, None)
    lane = road & (np.abs(xs - s.vanish_x) < 0.015 * w * t + 0.3) & ((np.sqrt(t) * 6.0) % 1.0 < 0.5)
    img[lane] = 200.0
    ground = (label == ROAD) | (label == SIDEWALK) | (label == BUILDING)
    angle = rng.uniform(0, 2 * np.pi)
    cast = (xs - w / 2) * np.cos(angle) + (ys - h) * np.sin(angle) > rng.uniform(-0.3, 0.3) * w
    if rng.random() < 0.6:
        gain[ground & cast] *= rng.uniform(0.45, 0.7)
    for cx, cy, rx, ry in s.shadows:
        xa, xb, ya, yb = s._box(cx - rx, cy - ry, cx + rx, cy + ry)
        under = ((xs[:, xa:xb] - cx) / rx) ** 2 + ((ys[ya:yb] - cy) / max(ry, 0.5)) ** 2 <= 1.0
        gain[ya:yb, xa:xb][under & road[ya:yb, xa:xb]] *= 0.4
    img *= gain[..., None]
    # Camera: colour cast, exposure, gamma, blur, sensor noise.
    img *= rng.uniform(0.75, 1.15) * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    gamma_lut = 255.0 * (np.arange(256, dtype=np.float32) / 255.0) ** rng.uniform(0.8, 1.25)
    img = gamma_lut[np.clip(img, 0, 255).astype(np.uint8)]
    if rng.random() < 0.8:  # 3x3 box blur (the outermost rows and columns stay sharp)
        img[1:-1] = (img[:-2] + img[1:-1] + img[2:]) / 3.0
        img[:, 1:-1] = (img[:, :-2] + img[:, 1:-1] + img[:, 2:]) / 3.0
    img += rng.uniform(2, 8) * _noise(rng, w, h)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_toy(seed: int, domain: str, split: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One toy sample: (image uint8 HxWx3, label uint8 HxW Cityscapes train ids), deterministic in the arguments."""
    rng = np.random.default_rng([seed, _DOMAIN_IDS[domain], _SPLIT_IDS[split], index])
    scene = _layout(rng, *size)
    label = np.asarray(scene.cls, np.uint8)[scene.inst]
    image = (_render_synthetic if domain == "synthetic" else _render_real)(scene, label, rng)
    return image, label


@DATASETS.register("toy", config=ToyConfig)
class ToyDataset(SegDataset):
    """Procedural street scenes (see the module docstring); item names are ``toy_<domain>_<split>_<index>.png``."""

    classes = CITYSCAPES

    def __init__(self, cfg: ToyConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg)
        self.cfg: ToyConfig = cfg
        self.resize = tuple(resize) if resize is not None else None
        self.length = cfg.num_images if cfg.num_images is not None else DEFAULT_NUM_IMAGES[cfg.split]

    def __len__(self) -> int:
        return self.length

    def name(self, index: int) -> str:
        """The item's file-like name, e.g. ``toy_synthetic_train_00007.png``."""
        return f"toy_{self.cfg.domain}_{self.cfg.split}_{index:05d}.png"

    def raw_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not 0 <= index < self.length:
            raise IndexError(f"toy index {index} out of range for {self.length} images")
        c = self.cfg
        image, label = render_toy(c.seed, c.domain, c.split, index, c.size)
        return image, label, self.name(index)

    def __getitem__(self, index: int) -> dict:
        image, label, name = self.raw_pair(index)
        if self.resize is not None:
            image = resize_image(image, self.resize)
            if self.label_size is not None:
                label = resize_label(label, self.label_size)
        return make_item(image, label, name)
