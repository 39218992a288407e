"""A synthetic aerial dataset (the default data of the demo: nothing can be downloaded).

Top-down drone-like scenes: textured ground (grass, fields, dirt, pavement), roads with lane marks, parking
lots, bushes, rocks and trees that occlude; 10 VisDrone classes drawn as small shapes with class-specific
aspect, colour and marks (windshields, cargo ribs, striped awnings, riders), rotated along roads or at
random, with shadows. At 256 px objects are about 7-45 px; larger images show a wider field (most objects
stay under 32 px at 640, as in VisDrone).
Deterministic: image i is a pure function of (seed, i). Written as an Ultralytics YOLO dataset.
"""
from __future__ import annotations

import math
import os

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from yolojax.data import geometry as geo
from yolojax.data.readers import VISDRONE_NAMES

NAMES = list(VISDRONE_NAMES)
(PEDESTRIAN, PEOPLE, BICYCLE, CAR, VAN, TRUCK, TRICYCLE, AWNING, BUS, MOTOR) = range(10)

# (length, width) in px at imgsz 256: the object's full extent, which is also its label.
_SIZE = {PEDESTRIAN: (8.0, 4.6), PEOPLE: (8.0, 7.2), BICYCLE: (12.0, 3.8), CAR: (17.0, 8.2), VAN: (21.0, 9.4),
         TRUCK: (31.0, 10.4), TRICYCLE: (12.5, 7.6), AWNING: (13.5, 8.4), BUS: (42.0, 11.4), MOTOR: (10.0, 5.4)}
# relative frequencies (VisDrone-like: cars and people dominate, buses and tricycles rare; not so skewed
# that the rare classes cannot be learned from a few hundred images)
_FREQ = np.array([14, 9, 6, 24, 10, 7, 6, 6, 5, 13], np.float64)
_ON_ROAD = {BICYCLE, CAR, VAN, TRUCK, TRICYCLE, AWNING, BUS, MOTOR}
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel drawing for tiny objects
_F = 1 << _SHIFT

# BGR colour families
_CAR_COLORS = [(40, 40, 200), (190, 80, 30), (30, 150, 40), (20, 20, 25), (160, 160, 165), (40, 170, 220),
               (120, 30, 120)]
_VAN_COLORS = [(235, 235, 235), (215, 220, 225), (200, 205, 200)]
_CAB_COLORS = [(30, 60, 200), (170, 90, 20), (20, 130, 230)]
_CARGO_COLORS = [(150, 165, 175), (110, 150, 170), (90, 120, 80), (170, 170, 170)]
_BUS_COLORS = [(30, 200, 240), (60, 190, 120), (40, 160, 250)]
_TRI_COLORS = [(120, 80, 30), (60, 110, 40), (100, 100, 40)]
_SHIRT_COLORS = [(40, 40, 210), (210, 120, 40), (40, 200, 230), (230, 230, 230), (180, 60, 160), (60, 170, 60)]
_GROUNDS = {"grass": (70, 125, 80), "field": (90, 150, 165), "dirt": (110, 150, 175), "pavement": (140, 140, 138)}


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _corners(center, theta: float, L: float, W: float) -> np.ndarray:
    """[4,2] corners of an L x W rectangle rotated by theta around center."""
    return np.array([[-L / 2, -W / 2], [L / 2, -W / 2], [L / 2, W / 2], [-L / 2, W / 2]]) @ _rot(theta).T + center


class _Canvas:
    """Draws primitives given in an object's local frame (x along its length, y across)."""

    def __init__(self, img: np.ndarray):
        self.img = img

    def poly(self, pts_local, center, theta, color, scale=1.0):
        p = np.asarray(pts_local, np.float64) * scale @ _rot(theta).T + center
        cv2.fillConvexPoly(self.img, np.round(p * _F).astype(np.int32), color, cv2.LINE_AA, _SHIFT)

    def rect(self, x0, x1, y0, y1, center, theta, color):
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], center, theta, color)

    def ellipse(self, cx, cy, ax, ay, center, theta, color):
        c = np.array([cx, cy]) @ _rot(theta).T + center
        cv2.ellipse(self.img, (int(round(c[0] * _F)), int(round(c[1] * _F))),
                    (max(1, int(round(ax * _F))), max(1, int(round(ay * _F)))), math.degrees(theta), 0, 360, color,
                    -1, cv2.LINE_AA, _SHIFT)


def _jitter(rng, color, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _pick(rng, colors):
    return colors[rng.integers(len(colors))]


def _draw_object(cv: _Canvas, rng, cls: int, center, theta, L, W):
    """Draw one object of extent L x W (local frame centered on `center`, rotated by theta)."""
    hl, hw = L / 2, W / 2
    dark = (35, 35, 40)
    if cls == CAR:
        body = _jitter(rng, _pick(rng, _CAR_COLORS))
        cv.rect(-hl, hl, -hw, hw, center, theta, body)
        cv.rect(0.16 * L, 0.34 * L, -0.42 * W, 0.42 * W, center, theta, dark)  # windshield
        cv.rect(-0.40 * L, -0.29 * L, -0.40 * W, 0.40 * W, center, theta, dark)  # rear window
        roof = tuple(min(255, int(c * 1.2) + 10) for c in body)
        cv.rect(-0.27 * L, 0.14 * L, -0.36 * W, 0.36 * W, center, theta, roof)
    elif cls == VAN:
        body = _jitter(rng, _pick(rng, _VAN_COLORS), 10)
        cv.rect(-hl, hl, -hw, hw, center, theta, body)
        cv.rect(0.34 * L, 0.45 * L, -0.42 * W, 0.42 * W, center, theta, dark)
        for y in (-0.22 * W, 0.22 * W):  # roof rails
            cv.rect(-0.40 * L, 0.28 * L, y - 0.05 * W, y + 0.05 * W, center, theta, (150, 150, 150))
    elif cls == TRUCK:
        cv.rect(-hl, 0.26 * L, -hw, hw, center, theta, _jitter(rng, _pick(rng, _CARGO_COLORS), 12))
        for x in np.linspace(-0.42, 0.18, 6) * L:  # container ribs
            cv.rect(x - 0.012 * L, x + 0.012 * L, -hw, hw, center, theta, (80, 85, 90))
        cv.rect(0.30 * L, hl, -0.46 * W, 0.46 * W, center, theta, _jitter(rng, _pick(rng, _CAB_COLORS)))
        cv.rect(0.44 * L, 0.49 * L, -0.40 * W, 0.40 * W, center, theta, dark)
    elif cls == BUS:
        cv.rect(-hl, hl, -hw, hw, center, theta, _jitter(rng, _pick(rng, _BUS_COLORS), 12))
        for y in (-0.44 * W, 0.44 * W):  # side windows seen at the roof edge
            cv.rect(-0.42 * L, 0.40 * L, y - 0.06 * W, y + 0.06 * W, center, theta, (60, 60, 60))
        for x in (-0.25 * L, 0.05 * L):  # roof air-conditioning units
            cv.rect(x, x + 0.12 * L, -0.25 * W, 0.25 * W, center, theta, (215, 215, 215))
        cv.rect(0.45 * L, 0.50 * L, -0.42 * W, 0.42 * W, center, theta, dark)
    elif cls in (TRICYCLE, AWNING):
        frame = _jitter(rng, _pick(rng, _TRI_COLORS))
        cv.rect(-hl, 0.12 * L, -hw, hw, center, theta, frame)  # rear box
        cv.poly([(0.10 * L, -0.34 * W), (hl, -0.12 * W), (hl, 0.12 * W), (0.10 * L, 0.34 * W)], center, theta, frame)
        cv.ellipse(0.22 * L, 0, 0.10 * L, 0.10 * L, center, theta, (30, 40, 60))  # driver
        if cls == AWNING:
            a, b = ((40, 40, 220), (235, 235, 235)) if rng.uniform() < 0.6 else ((200, 110, 30), (235, 235, 235))
            xs = np.linspace(-0.5, 0.14, 6) * L
            for k in range(5):
                cv.rect(xs[k], xs[k + 1], -hw, hw, center, theta, a if k % 2 == 0 else b)
        else:
            cv.rect(-0.42 * L, 0.04 * L, -0.36 * W, 0.36 * W, center, theta, tuple(int(c * 0.6) for c in frame))
    elif cls == MOTOR:
        cv.rect(-hl, hl, -0.22 * W, 0.22 * W, center, theta, (45, 45, 50))
        cv.ellipse(-0.05 * L, 0, 0.18 * L, hw, center, theta, _jitter(rng, _pick(rng, _SHIRT_COLORS), 25))
        cv.ellipse(0.05 * L, 0, 0.11 * L, 0.11 * L, center, theta, _jitter(rng, (30, 30, 30), 10))  # helmet
    elif cls == BICYCLE:  # long and thin: bright frame, two wheels, a small rider in the middle
        for x in (-0.33 * L, 0.33 * L):
            cv.ellipse(x, 0, 0.17 * L, 0.16 * W, center, theta, (20, 20, 20))
        cv.rect(-0.42 * L, 0.42 * L, -0.08 * W, 0.08 * W, center, theta, (210, 210, 205))
        cv.ellipse(-0.02 * L, 0, 0.08 * L, hw, center, theta, _jitter(rng, _pick(rng, _SHIRT_COLORS), 25))
        cv.ellipse(0.03 * L, 0, 0.06 * L, 0.06 * L, center, theta, (50, 70, 110))
    elif cls == PEDESTRIAN:  # upright figure seen obliquely: legs, torso, head (x points up the image)
        for y in (-0.16 * W, 0.16 * W):
            cv.rect(-hl, -0.10 * L, y - 0.10 * W, y + 0.10 * W, center, theta, (50, 45, 40))
        cv.ellipse(0.08 * L, 0, 0.22 * L, hw, center, theta, _jitter(rng, _pick(rng, _SHIRT_COLORS), 25))
        cv.ellipse(0.37 * L, 0, 0.13 * L, 0.28 * W, center, theta, (60, 90, 140))
    elif cls == PEOPLE:  # sitting or squatting: a round two-tone blob with a head on top
        shirt = _jitter(rng, _pick(rng, _SHIRT_COLORS), 25)
        cv.ellipse(-0.10 * L, 0, 0.40 * L, hw, center, theta, (70, 60, 55))
        cv.ellipse(0.05 * L, 0, 0.30 * L, 0.36 * W, center, theta, shirt)
        cv.ellipse(0.30 * L, 0, 0.17 * L, 0.17 * L, center, theta, (40, 60, 100))


def _object_scale(S: int) -> float:
    """Pixels per unit of `_SIZE`. Larger images show a wider field rather than a closer one (objects grow
    as S**0.6, their number as S**0.8): at 256 px objects are about 7-45 px, at 640 most stay under 32 px
    as in VisDrone, and a small training size still leaves them learnable."""
    return (S / 256) ** 0.6


def _ground(rng, S: int) -> tuple[np.ndarray, list]:
    """Textured ground with fields, roads and a parking lot; returns (img BGR, roads as (p0, p1, width))."""
    kind = rng.choice(list(_GROUNDS))
    base = np.array(_GROUNDS[kind], np.float32)
    g = max(2, S // 32)
    # brightness varies more than hue on real ground: shared low-frequency noise plus a little per channel
    low = cv2.resize(rng.normal(0, 1, (g, g, 4)).astype(np.float32), (S, S), interpolation=cv2.INTER_CUBIC)
    img = base + low[..., :1] * 16 + low[..., 1:] * 4 + rng.normal(0, 1, (S, S, 1)).astype(np.float32) * 6
    img = np.clip(img, 0, 255).astype(np.uint8)
    u = _object_scale(S)
    # fields: a few large quads of another tone, some with crop rows
    for _ in range(rng.integers(0, 4)):
        c = rng.uniform(0, S, 2)
        r = rng.uniform(0.15, 0.45) * S
        ang = rng.uniform(0, np.pi)
        pts = c + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * rng.uniform(0.5, 1.0, (4, 2)) * r @ _rot(ang).T
        tone = _jitter(rng, _GROUNDS[rng.choice(["grass", "field", "dirt"])], 20)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], tone, cv2.LINE_AA)
        if rng.uniform() < 0.5:
            d = np.array([math.cos(ang), math.sin(ang)])
            n = np.array([-d[1], d[0]])
            for k in np.arange(-r, r, max(3, 4 * u)):
                a, b = c + n * k - d * r, c + n * k + d * r
                cv2.line(img, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)),
                         tuple(int(x * 0.85) for x in tone), max(1, int(u)), cv2.LINE_AA)
    roads = []
    for _ in range(rng.integers(1, 3) if rng.uniform() < 0.85 else 0):
        width = rng.uniform(22, 34) * u
        ang = rng.uniform(0, np.pi)
        c = rng.uniform(0.25, 0.75, 2) * S
        d = np.array([math.cos(ang), math.sin(ang)])
        p0, p1 = c - d * 2 * S, c + d * 2 * S
        asphalt = int(rng.integers(60, 95))
        cv2.line(img, tuple(np.round(p0).astype(int)), tuple(np.round(p1).astype(int)), (asphalt,) * 3,
                 int(round(width)), cv2.LINE_AA)
        # dashed centre line
        for t in np.arange(-2 * S, 2 * S, 14 * u):
            a, b = c + d * t, c + d * (t + 6 * u)
            cv2.line(img, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), (225, 225, 225),
                     max(1, int(round(u))), cv2.LINE_AA)
        roads.append((c, d, width))
    return img, roads


def _scene(rng, S: int, zoom: float = 1.0):
    """One image and its objects: (img BGR [S,S,3], classes [N], polygons [N,4,2]). zoom: a lower flight
    (objects `zoom` times larger, 1/zoom as many placed)."""
    img, roads = _ground(rng, S)
    u = _object_scale(S) * zoom * rng.uniform(0.85, 1.2)  # altitude
    objs = []  # (cls, center, theta, L, W)
    occupied = np.zeros((S, S), np.uint8)

    def place(cls, center, theta, L, W):
        poly = _corners(center, theta, L, W)
        b = geo.polygons_to_xyxy(poly[None])[0]
        if b[0] < 1 or b[1] < 1 or b[2] > S - 1 or b[3] > S - 1:
            return False
        # objects may touch (crowds, parking rows) but not overlap by more than 8% of their area
        x0, y0, x1, y1 = int(b[0]), int(b[1]), int(math.ceil(b[2])) + 1, int(math.ceil(b[3])) + 1
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(m, np.round((poly - (x0, y0)) * _F).astype(np.int32), 1, cv2.LINE_8, _SHIFT)
        area = max(1, int(m.sum()))
        if (m & occupied[y0:y1, x0:x1]).sum() > 0.08 * area:
            return False
        occupied[y0:y1, x0:x1] |= m
        objs.append((cls, np.asarray(center, np.float64), theta, L, W))
        return True

    def size(cls):
        L, W = _SIZE[cls]
        k = u * rng.uniform(0.85, 1.15)
        return L * k, W * k

    # parking lot: a grid of cars and vans
    if rng.uniform() < 0.3:
        rows, cols = rng.integers(1, 3), rng.integers(3, 7)
        ang = rng.uniform(0, np.pi)
        origin = rng.uniform(0.2, 0.8, 2) * S
        pitch_x, pitch_y = 12 * u, 24 * u
        lot = np.array([[-0.6, -0.6], [cols - 0.4, -0.6], [cols - 0.4, rows - 0.4], [-0.6, rows - 0.4]])
        lot = lot * [pitch_x, pitch_y]
        cv2.fillPoly(img, [np.round(lot @ _rot(ang).T + origin).astype(np.int32)], (118, 118, 118), cv2.LINE_AA)
        for r in range(rows):
            for c in range(cols):
                if rng.uniform() < 0.8:
                    cls = CAR if rng.uniform() < 0.8 else VAN
                    L, W = size(cls)
                    ctr = origin + np.array([c * pitch_x, r * pitch_y]) @ _rot(ang).T
                    place(cls, ctr, ang + np.pi / 2 + rng.normal(0, 0.05) + (np.pi if rng.uniform() < 0.5 else 0), L, W)
    n = max(1, int(rng.integers(8, 36) * (S / 256) ** 0.8 / zoom))
    target = len(objs) + n
    tries = 0
    while len(objs) < target and tries < n * 8:
        tries += 1
        cls = int(rng.choice(10, p=_FREQ / _FREQ.sum()))
        L, W = size(cls)
        if cls in _ON_ROAD and roads and rng.uniform() < 0.8:
            c0, d, width = roads[rng.integers(len(roads))]
            lane = rng.choice([-0.25, 0.25]) * width + rng.normal(0, 0.05) * width
            t = rng.uniform(-0.7, 0.7) * S
            center = c0 + d * t + np.array([-d[1], d[0]]) * lane
            theta = math.atan2(d[1], d[0]) + (np.pi if lane < 0 else 0) + rng.normal(0, 0.04)
        else:
            center = rng.uniform(0.05, 0.95, 2) * S
            theta = rng.uniform(-np.pi, np.pi)
        if cls == PEDESTRIAN:
            theta = -np.pi / 2 + rng.normal(0, 0.2)  # standing people are seen upright
        elif cls == PEOPLE:
            theta = -np.pi / 2 + rng.normal(0, 0.5)
        placed = place(cls, center, theta, L, W)
        if placed and cls in (PEDESTRIAN, PEOPLE) and rng.uniform() < 0.4:  # small groups
            for _ in range(rng.integers(1, 4)):
                L2, W2 = size(cls)
                place(cls, center + rng.normal(0, 1, 2) * 7 * u, theta + rng.normal(0, 0.15), L2, W2)
    # clutter that is not an object: bushes and rocks
    for _ in range(rng.integers(0, 10)):
        c = tuple(int(v) for v in rng.uniform(0, S, 2))
        r = int(rng.uniform(2, 5) * u) + 1
        color = _jitter(rng, (40, 90, 50) if rng.uniform() < 0.6 else (150, 150, 145), 15)
        cv2.circle(img, c, r, color, -1, cv2.LINE_AA)
    canvas = _Canvas(img)
    shadow = np.zeros((S, S), np.uint8)
    sh = np.array([1.6, 1.2]) * u
    for cls, center, theta, L, W in objs:  # shadows first, one soft pass
        p = _corners(center + sh, theta, L, W)
        cv2.fillConvexPoly(shadow, np.round(p * _F).astype(np.int32), 255, cv2.LINE_AA, _SHIFT)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.6, u * 0.8)).astype(np.float32)[..., None] / 255
    img[:] = (img * (1 - 0.45 * shadow)).astype(np.uint8)
    for cls, center, theta, L, W in objs:
        _draw_object(canvas, rng, cls, center, theta, L, W)
    classes = np.array([o[0] for o in objs], np.int32)
    polys = np.array([_corners(c, t, L, W) for _, c, t, L, W in objs], np.float64).reshape(-1, 4, 2)
    # trees last: they occlude; objects more than 60% hidden lose their label
    tree_mask = np.zeros((S, S), np.uint8)
    for _ in range(rng.integers(0, 4)):
        c = rng.uniform(0, S, 2)
        r = rng.uniform(7, 16) * u
        for _ in range(4):
            cc = tuple(int(v) for v in c + rng.normal(0, r / 3, 2))
            rr = int(r * rng.uniform(0.5, 0.8))
            cv2.circle(img, cc, rr, _jitter(rng, (35, 85, 45), 12), -1, cv2.LINE_AA)
            cv2.circle(img, (cc[0] - rr // 3, cc[1] - rr // 3), max(1, rr // 2), _jitter(rng, (55, 115, 65), 10), -1,
                       cv2.LINE_AA)
            cv2.circle(tree_mask, cc, rr, 1, -1)
    if len(objs) and tree_mask.any():
        keep = np.ones(len(objs), bool)
        for k, p in enumerate(polys):
            m = np.zeros((S, S), np.uint8)
            cv2.fillConvexPoly(m, np.round(p).astype(np.int32), 1)
            area = m.sum()
            keep[k] = area == 0 or (m & tree_mask).sum() / area <= 0.6
        classes, polys = classes[keep], polys[keep]
    img = cv2.GaussianBlur(img, (3, 3), 0.5)
    return img, classes, polys


def synth_image(seed: int, index: int, imgsz: int, zoom: float = 1.0):
    """Image `index` of the dataset with `seed`: (img BGR uint8 [S,S,3], classes int32 [N], polygons [N,4,2])."""
    rng = np.random.default_rng([int(seed), int(index), 0x5A17])
    return _scene(rng, imgsz, zoom)


def make_synthetic(out: str | os.PathLike, images: int = 500, imgsz: int = 256, seed: int = 0, obb: bool = False,
                   val_fraction: float = 0.2, progress: bool = True, quality: int = 92, zoom: float = 1.0) -> str:
    """Write the synthetic dataset as a YOLO dataset under `out`; returns the path of out/data.yaml.

    images/{train,val}/*.jpg and labels/{train,val}/*.txt (`cls cx cy w h` normalized, or with obb=True
    `cls x1 y1 ... x4 y4` of the rotated rectangles). The last round(images * val_fraction) images (at
    least 1 when images > 1 and val_fraction > 0) form val; with none, val is the train folder.
    zoom > 1 flies lower: objects zoom times larger, fewer per image. Same (images, imgsz, seed, obb, zoom)
    -> identical files.
    """
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if imgsz < 64:
        raise ValueError(f"imgsz must be >= 64, got {imgsz}")
    if not 0.25 <= zoom <= 8:
        raise ValueError(f"zoom must be in [0.25, 8], got {zoom}")
    out = os.fspath(out)
    n_val = int(round(images * val_fraction))
    if images > 1 and val_fraction > 0:
        n_val = min(max(n_val, 1), images - 1)
    n_train = images - n_val
    for split in ("train", "val") if n_val else ("train",):
        os.makedirs(os.path.join(out, "images", split), exist_ok=True)
        os.makedirs(os.path.join(out, "labels", split), exist_ok=True)
    for i in tqdm(range(images), desc="synth", unit="img", disable=not progress):
        split = "train" if i < n_train else "val"
        img, classes, polys = synth_image(seed, i, imgsz, zoom)
        stem = f"synth_{i:06d}"
        cv2.imwrite(os.path.join(out, "images", split, stem + ".jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        lines = []
        if obb:
            p = np.clip(polys / imgsz, 0, 1).reshape(-1, 8)
            lines = [f"{c} " + " ".join(f"{v:.6f}" for v in row) for c, row in zip(classes, p)]
        else:
            b = geo.xyxy_to_xywh(geo.polygons_to_xyxy(polys)) / imgsz if len(polys) else np.zeros((0, 4))
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, (x, y, w, h) in zip(classes, b)]
        with open(os.path.join(out, "labels", split, stem + ".txt"), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    cfg = {"train": "images/train", "val": "images/val" if n_val else "images/train", "nc": len(NAMES),
           "names": dict(enumerate(NAMES))}
    path = os.path.join(out, "data.yaml")
    with open(path, "w") as f:
        f.write(f"# yolojax synthetic aerial dataset: {images} images, {imgsz} px, seed {seed}, zoom {zoom:g}"
                f"{', oriented boxes' if obb else ''}\n")
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path
