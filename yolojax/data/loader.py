"""Static-shape batch loader: parallel decode + augmentation, prefetching, deterministic and resumable.

Every sample is a pure function of (seed, epoch, position in the epoch): its random generator is seeded
from those three numbers, so batches are identical for any worker count, prefetch depth or host split.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import math
import os
import threading
import warnings
from typing import Iterator

import cv2
import numpy as np

from yolojax.data import augment as aug
from yolojax.data.imageio import ImageError, decode, reduce_factor
from yolojax.data.records import Dataset, Problem, Record

# Ultralytics keeps a buffer of min(n, 8 * batch, 1000) recently loaded images and draws mosaic partners
# from it; here partners are drawn from the same-sized window of positions around the sample in the
# epoch order, which keeps the partner set a pure function of the position.
_MOSAIC_WINDOW_PER_BATCH = 8
_MOSAIC_WINDOW_MAX = 1000
_DRY_EPOCH = 2**31 - 1  # epoch number of the max_boxes dry run (its own random stream)


def load_resized(rec: Record, imgsz: int, fast: bool = False):
    """Decode an image and resize its long side to imgsz (Ultralytics `load_image`).

    fast lets libjpeg decode at 1/2, 1/4 or 1/8 scale first when the image is that much larger.
    Returns (img uint8 BGR [h,w,3], (h, w), targets scaled to it). Raises ImageError for a bad file.
    """
    h0, w0 = rec.shape
    k = reduce_factor(rec.shape, imgsz) if fast else 1
    img = decode(rec.path, k)
    dh, dw = img.shape[:2]
    if abs(dh - h0 / k) > 1 or abs(dw - w0 / k) > 1:
        raise ImageError(f"{rec.path}: decodes to {dw * k}x{dh * k}, the dataset recorded {w0}x{h0} "
                         "(file changed since it was read?)")
    h, w = aug.resized_shape(rec.shape, imgsz)
    if (dh, dw) != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img, (h, w), aug.Targets.from_record(rec).affine(w / w0, h / h0, 0, 0)


def _round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


class Loader:
    """Iterate batches (dicts of numpy) of a `Dataset` with static shapes.

    Keys: images uint8 [B,H,W,3] RGB (H = W = imgsz, or the batch's own shape with rect); boxes float32
    [B,M,4] xyxy pixels of the batch image; classes int32
    [B,M] (-1 on class-agnostic ignore regions, 0 on padding); mask bool [B,M] (row is a box or ignore
    region); ignore bool [B,M] (row is an ignore region: no target, its area gives no negatives); obb
    float32 [B,M,5] for oriented datasets; valid bool [B] (False on padding samples of a last partial
    batch); eval meta: image_ids list[str], indices int64 [B] (dataset index, -1 on padding), orig_shapes
    int32 [B,2] (h, w), ratio_pad float32 [B,4] (ratio_x, ratio_y, padx, pady): original = (box - pad) / ratio
    per axis; zeros for augmented samples, which have no inverse.

    rect (validation only): Ultralytics' rectangular batches -- the images in order of aspect ratio, every
    batch letterboxed to its own (h, w) (`augment.rect_batch_shapes`, `pad` strides of margin), so a batch's
    image size is `batch_shape(b)` and only a handful of distinct shapes occur (one compilation each).

    A training loader (drop_last) on fewer images than batch_size trains with a smaller batch, as Ultralytics
    does: the largest multiple of `batch_multiple` (default: the JAX device count, so the batch still shards
    evenly) that the data fills, with a warning; `batch_size` is then that batch.

    batch_size is the global batch; with process_count > 1 each host gets its slice of B/process_count
    rows. max_boxes None picks M from the data (see `auto_max_boxes`); rows beyond M are cut (ignore regions
    first), counted in `boxes_cut`, with one warning. epochs + close_mosaic turn mosaic off for the last
    close_mosaic epochs (or pass mosaic= to `set_epoch`). Unreadable images found while loading are
    replaced by the next readable one and listed in `problems`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, imgsz: int, augment: bool, max_boxes: int | None = None,
                 shuffle: bool | None = None, seed: int = 0, workers: int | None = None, mosaic: bool = True,
                 drop_last: bool | None = None, process_index: int = 0, process_count: int = 1, *,
                 hyp: aug.AugmentConfig | None = None, epochs: int | None = None, close_mosaic: int = 10,
                 prefetch: int = 2, fast_decode: bool | None = None, cache_images: int | None = None,
                 rect: bool = False, pad: float = 0.5, stride: int = 32, batch_multiple: int | None = None):
        if len(dataset) == 0:
            raise ValueError(f"{dataset.root}: dataset has no images")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if imgsz % 32:
            raise ValueError(f"imgsz {imgsz} must be a multiple of 32 (the largest stride)")
        if rect and augment:
            raise ValueError("rect batches are for validation (augment=False); training uses mosaic or squares")
        n = len(dataset)
        self.drop_last = augment if drop_last is None else drop_last
        if self.drop_last and n < batch_size:
            batch_size = self._shrunk_batch(dataset, n, batch_size, process_count, batch_multiple)
        self.dataset = dataset
        self.batch_size = batch_size
        self.local_batch = batch_size // process_count
        self.imgsz = imgsz
        self.augment = augment
        self.shuffle = augment if shuffle is None else shuffle
        self.seed = int(seed)
        self.workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
        self.mosaic = mosaic and augment
        self.process_index, self.process_count = process_index, process_count
        self.hyp = hyp or aug.AugmentConfig()
        self.epochs, self.close_mosaic = epochs, close_mosaic
        self.prefetch = max(1, prefetch)
        self.fast_decode = augment if fast_decode is None else fast_decode
        self.obb = dataset.obb
        self.rect = bool(rect)
        self._rect_order, self.batch_shapes = None, None
        if self.rect:
            self._rect_order, self.batch_shapes = aug.rect_batch_shapes(
                np.array([r.shape for r in dataset.records]), batch_size, imgsz, stride, pad)
        self._window = min(n, _MOSAIC_WINDOW_PER_BATCH * batch_size, _MOSAIC_WINDOW_MAX)
        if cache_images is None:
            cache_images = min(n, self._window + (self.prefetch + 1) * batch_size) if self.mosaic else 0
        self._cache_cap = cache_images
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._bad: dict[int, str] = {}
        self.problems: list[Problem] = []
        self.boxes_cut = 0
        self._warned_cut = False
        self._epoch, self._batch = 0, 0
        self._mosaic_override: bool | None = None
        self._pool: cf.ThreadPoolExecutor | None = None
        self.max_boxes = int(max_boxes) if max_boxes else self.auto_max_boxes()

    @staticmethod
    def _shrunk_batch(dataset: Dataset, n: int, batch_size: int, process_count: int,
                      batch_multiple: int | None) -> int:
        """The batch a drop_last loader on n < batch_size images trains with (warns), or raises ValueError."""
        if batch_multiple is None:
            try:
                import jax
                batch_multiple = jax.device_count()
            except Exception:  # pragma: no cover  (no JAX backend: only the host split matters)
                batch_multiple = 1
        m = math.lcm(max(1, int(batch_multiple)), process_count)
        new = n // m * m
        if new < 1:
            raise ValueError(f"{dataset.root}: {n} training images cannot fill one batch split over {m} devices "
                             f"(one image per device at least): add images or use fewer devices")
        warnings.warn(f"{dataset.root}: only {n} training images, fewer than the batch of {batch_size}: training "
                      f"with batch {new}{f' (a multiple of the {m} devices)' if m > 1 else ''}", stacklevel=3)
        return new

    def batch_shape(self, b: int) -> tuple[int, int]:
        """(h, w) of the images of batch b: the rect batch shape, else the imgsz square."""
        if self.rect:
            h, w = self.batch_shapes[b]
            return int(h), int(w)
        return self.imgsz, self.imgsz

    # ------------------------------------------------------------------------------------ epoch / state
    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int, mosaic: bool | None = None) -> None:
        """Start `epoch` from its first batch (new shuffle). mosaic overrides the close_mosaic rule."""
        self._epoch, self._batch = int(epoch), 0
        self._mosaic_override = mosaic

    def mosaic_on(self, epoch: int | None = None) -> bool:
        e = self._epoch if epoch is None else epoch
        if not self.mosaic:
            return False
        if self._mosaic_override is not None:
            return self._mosaic_override
        return self.epochs is None or e < self.epochs - self.close_mosaic

    def state(self) -> dict:
        """Position for checkpoints: the next batch `__iter__` yields."""
        return {"epoch": self._epoch, "batch": self._batch, "seed": self.seed, "mosaic": self._mosaic_override}

    def restore(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        if not 0 <= int(state["batch"]) <= len(self):
            raise ValueError(f"loader state batch {state['batch']} outside [0, {len(self)}]")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._mosaic_override = state.get("mosaic")

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order of `epoch` (same on every host)."""
        n = len(self.dataset)
        if self.rect:
            return self._rect_order
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(n)

    # ---------------------------------------------------------------------------------------- samples
    def _load(self, i: int):
        """(j, resized image item) for dataset index i (cached); j != i when image i is unreadable and the
        next readable one stands in for it."""
        n = len(self.dataset)
        for step in range(n):
            j = (i + step) % n
            if j in self._bad:
                continue
            with self._lock:
                hit = self._cache.get(j)
                if hit is not None:
                    self._cache.move_to_end(j)
                    return j, hit
            try:
                item = load_resized(self.dataset[j], self.imgsz, self.fast_decode)
            except ImageError as e:
                with self._lock:
                    if j not in self._bad:
                        self._bad[j] = str(e)
                        self.problems.append(Problem(self.dataset[j].path, None,
                                                     f"{str(e).split(': ', 1)[-1]}: replaced by the next image",
                                                     "skipped", "image"))
                continue
            item[0].setflags(write=False)  # shared through the cache: transforms must copy
            if self._cache_cap:
                with self._lock:
                    self._cache[j] = item
                    while len(self._cache) > self._cache_cap:
                        self._cache.popitem(last=False)
            return j, item
        raise ValueError(f"{self.dataset.root}: no readable image left ({len(self._bad)} failed)")

    def _partners(self, rng: np.random.Generator, pos: int, order: np.ndarray) -> list[int]:
        n = len(order)
        half = max(1, self._window // 2)
        offs = rng.integers(1, half + 1, size=3) * np.where(rng.uniform(size=3) < 0.5, -1, 1)
        return [int(order[(pos + o) % n]) for o in offs]

    def sample(self, epoch: int, pos: int, order: np.ndarray | None = None, dry: bool = False,
               mosaic: bool | None = None):
        """Sample at `pos` of `epoch`: (img BGR [H,W,3] or None if dry, targets, ratio_pad, index of the
        dataset image it shows). dry: only the targets (no decoding); mosaic: override whether it is on."""
        order = self.order(epoch) if order is None else order
        rng = np.random.default_rng([self.seed, epoch, pos])
        i = int(order[pos])
        if dry:
            def get(j):
                r = self.dataset[j]
                hw = aug.resized_shape(r.shape, self.imgsz)
                return j, (None, hw, aug.Targets.from_record(r).affine(hw[1] / r.shape[1], hw[0] / r.shape[0], 0, 0))
        else:
            get = self._load
        if self.augment:
            partners = self._partners(rng, pos, order)
            on = self.mosaic_on(epoch) if mosaic is None else mosaic
            use_mosaic = rng.uniform() < self.hyp.mosaic and on
            loaded = [get(j) for j in ([i] + partners if use_mosaic else [i])]
            i = loaded[0][0]
            img, t = aug.train_transform([item for _, item in loaded], self.imgsz, rng, self.hyp)
            ratio_pad = (0.0, 0.0, 0.0, 0.0)
        else:
            i, item = get(i)
            shape = self.batch_shape(pos // self.batch_size) if self.rect else None
            img, t, ratio_pad = aug.val_transform(item, self.dataset[i].shape, self.imgsz, shape)
        return img, t, ratio_pad, i

    def auto_max_boxes(self, samples: int = 256) -> int:
        """Rows per image M: the most boxes one image holds (validation, or training without mosaic), or
        for mosaic the most seen in a dry run of `samples` augmented samples plus 25% headroom; rounded up
        to a multiple of 16 (at least 16)."""
        most = max(len(r) for r in self.dataset)
        if self.mosaic:
            n = len(self.dataset)
            order = self.order(_DRY_EPOCH)
            pos = np.random.default_rng([self.seed, _DRY_EPOCH]).choice(n, size=min(samples, n), replace=False)
            seen = max(len(self.sample(_DRY_EPOCH, int(p), order, dry=True, mosaic=True)[1]) for p in pos)
            most = max(most, int(math.ceil(seen * 1.25)))
        return max(16, _round_up(most, 16))

    # ------------------------------------------------------------------------------------------ batches
    def positions(self, b: int) -> range:
        """Epoch positions of this host's rows of global batch b (may run past the data on a last batch)."""
        start = b * self.batch_size + self.process_index * self.local_batch
        return range(start, start + self.local_batch)

    def _one(self, epoch: int, pos: int, order: np.ndarray):
        if pos >= len(order):
            return None
        img, t, ratio_pad, i = self.sample(epoch, pos, order)
        return img, self._pack(t), ratio_pad, i

    def _pack(self, t: aug.Targets):
        m = self.max_boxes
        n = len(t)
        rank = np.argsort(t.ignore, kind="stable")  # targets before ignore regions: cut those first
        if n > m:
            with self._lock:
                self.boxes_cut += n - m
                warn = not self._warned_cut
                self._warned_cut = True
            if warn:
                warnings.warn(f"a sample has {n} boxes, max_boxes is {m}: extra rows are cut "
                              "(ignore regions first; see Loader.boxes_cut). Pass a larger max_boxes.", stacklevel=3)
            rank = rank[:m]
        t = t.select(rank)
        obb = t.obb()
        return t, obb

    def batch(self, epoch: int, b: int) -> dict:
        """Batch b of `epoch` computed in this thread (what iteration yields for that position)."""
        order = self.order(epoch)
        return self._collate([self._one(epoch, p, order) for p in self.positions(b)], self.batch_shape(b))

    def _collate(self, samples: list, shape: tuple[int, int]) -> dict:
        B, M = self.local_batch, self.max_boxes
        out = {
            "images": np.full((B, *shape, 3), aug.PAD_VALUE, np.uint8),
            "boxes": np.zeros((B, M, 4), np.float32),
            "classes": np.zeros((B, M), np.int32),
            "mask": np.zeros((B, M), bool),
            "ignore": np.zeros((B, M), bool),
            "valid": np.zeros(B, bool),
            "image_ids": [""] * B,
            "indices": np.full(B, -1, np.int64),
            "orig_shapes": np.zeros((B, 2), np.int32),
            "ratio_pad": np.zeros((B, 4), np.float32),
        }
        if self.obb:
            out["obb"] = np.zeros((B, M, 5), np.float32)
        for k, s in enumerate(samples):
            if s is None:
                continue
            img, (t, obb), ratio_pad, i = s
            n = len(t)
            cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out["images"][k])
            out["boxes"][k, :n] = t.boxes
            out["classes"][k, :n] = t.classes
            out["mask"][k, :n] = True
            out["ignore"][k, :n] = t.ignore
            if obb is not None:
                out["obb"][k, :n] = obb
            out["valid"][k] = True
            rec = self.dataset[i]
            out["image_ids"][k] = rec.image_id
            out["indices"][k] = i
            out["orig_shapes"][k] = rec.shape
            out["ratio_pad"][k] = ratio_pad
        return out

    def __iter__(self) -> Iterator[dict]:
        epoch, start, nb = self._epoch, self._batch, len(self)
        order = self.order(epoch)
        if self.workers <= 0:
            for b in range(start, nb):
                batch = self._collate([self._one(epoch, p, order) for p in self.positions(b)], self.batch_shape(b))
                self._batch = b + 1
                yield batch
        else:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="yolojax-data")
            pending: collections.deque = collections.deque()
            nxt = start
            try:
                for b in range(start, nb):
                    while nxt < nb and len(pending) <= self.prefetch:
                        pending.append([self._pool.submit(self._one, epoch, p, order) for p in self.positions(nxt)])
                        nxt += 1
                    batch = self._collate([f.result() for f in pending.popleft()], self.batch_shape(b))
                    self._batch = b + 1
                    yield batch
            finally:
                for fs in pending:
                    for f in fs:
                        f.cancel()
        if self._epoch == epoch and self._batch == nb:
            self._epoch, self._batch = epoch + 1, 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
