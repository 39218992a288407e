"""Detection metrics the Ultralytics 8.4 way (mAP50, mAP50-95, P/R at max F1), plus COCO area ranges.

Matching (per image, per class, separately at every IoU threshold 0.50:0.05:0.95 and every area
range): detections in descending confidence each claim the best still-unclaimed ground truth with
IoU >= threshold, as COCO's `evaluateImg`. Ignored ground truth (VisDrone ignored regions, VOC
difficult, COCO crowd) is only tried when no regular ground truth matches; a detection that lands
on it counts as neither TP nor FP, and it is not an instance. As COCO does for crowd, the overlap
with an ignored box is intersection over the detection's area (`ignore_overlap="ioa"`, or "iou")
and an ignored box may absorb any number of detections.

AP is Ultralytics 8.4's `compute_ap`: sentinels (0, 1), (r_max, 0), (1, 0), the precision envelope
by `np.maximum.accumulate`, then the trapezoid integral of the 101-point linear interpolation
(`ap_method="coco"` gives pycocotools' step sampling instead, for cross-checks).
Classes count toward the mean only when they have instances (detections of absent classes do not
lower mAP; absent detections of present classes do).

For COCO's APs/APm/APl the same matching runs with ground truth outside the area range marked
ignored (never claimable by regular matching, claimable once as an ignored box) and unmatched
detections outside the range ignored, exactly as `COCOeval.evaluateImg` does; AP then uses the
same Ultralytics interpolation as mAP50-95 above (see docs/evaluation.md for the numbers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

from yolojax.eval.boxes import box_area, box_ioa, box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# COCO area ranges on ground-truth area (pixels^2), both ends inclusive as in COCOeval.
AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
N_CURVE = 1000  # points of the confidence / recall axes of the curves, as Ultralytics


# ----------------------------------------------------------------------------------------------
# Matching


def match_detections(
    pred_boxes,
    pred_classes,
    gt_boxes,
    gt_classes,
    gt_ignore=None,
    *,
    iou_thresholds=IOU_THRESHOLDS,
    area_ranges: Sequence[tuple[float, float]] = tuple(AREA_RANGES.values()),
    ignore_overlap: str = "ioa",
):
    """Greedy COCO-style matching of one image's detections, already sorted by descending score.

    pred_boxes [N,4] xyxy, pred_classes [N], gt_boxes [M,4] xyxy, gt_classes [M], gt_ignore [M] bool.
    Returns (tp [N,R,T] bool, ignored [N,R,T] bool, gt_counted [M,R] bool) for R area ranges and
    T IoU thresholds: `ignored` detections are neither TP nor FP; `gt_counted` are the instances.
    """
    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    crowd = np.zeros(len(gt_boxes), bool) if gt_ignore is None else np.asarray(gt_ignore, bool).reshape(-1)
    if ignore_overlap not in ("ioa", "iou"):
        raise ValueError(f"ignore_overlap must be 'ioa' or 'iou', got {ignore_overlap!r}")
    overlap = box_iou(pred_boxes, gt_boxes)
    if ignore_overlap == "ioa" and crowd.any() and len(pred_boxes):
        overlap[:, crowd] = box_ioa(pred_boxes, gt_boxes[crowd])
    return match_overlaps(overlap, pred_classes, gt_classes, crowd, det_area=box_area(pred_boxes),
                          gt_area=box_area(gt_boxes), iou_thresholds=iou_thresholds, area_ranges=area_ranges)


def match_overlaps(
    overlap,
    pred_classes,
    gt_classes,
    gt_ignore=None,
    *,
    det_area,
    gt_area,
    iou_thresholds=IOU_THRESHOLDS,
    area_ranges: Sequence[tuple[float, float]] = tuple(AREA_RANGES.values()),
):
    """`match_detections` on a precomputed overlap matrix, for any box geometry (rotated boxes, polygons).

    overlap [N,M] (detections sorted by descending score x ground truth; for ignored ground truth the overlap
    that should count there, e.g. intersection over the detection's area); det_area [N], gt_area [M] for the
    area ranges. Returns (tp [N,R,T], ignored [N,R,T], gt_counted [M,R]) as `match_detections`.
    """
    pred_classes, gt_classes = np.asarray(pred_classes).reshape(-1), np.asarray(gt_classes).reshape(-1)
    n, m = len(pred_classes), len(gt_classes)
    overlap = np.asarray(overlap, np.float64).reshape(n, m)
    crowd = np.zeros(m, bool) if gt_ignore is None else np.asarray(gt_ignore, bool).reshape(-1)
    thr = np.asarray(iou_thresholds, np.float64)
    rng = np.asarray(area_ranges, np.float64).reshape(-1, 2)
    r, t = len(rng), len(thr)
    gt_area = np.asarray(gt_area, np.float64).reshape(m)
    det_area = np.asarray(det_area, np.float64).reshape(n)
    gt_out = (gt_area[None] < rng[:, :1]) | (gt_area[None] > rng[:, 1:])  # [R,M]
    det_out = (det_area[None] < rng[:, :1]) | (det_area[None] > rng[:, 1:])  # [R,N]
    gt_ign = crowd[None] | gt_out  # [R,M]
    tp = np.zeros((n, r, t), bool)
    ign = np.zeros((n, r, t), bool)

    if n and m:
        overlap = np.where(pred_classes[:, None] == gt_classes[None], overlap, -1.0)  # [N,M]
        claimed = np.zeros((r, t, m), bool)
        thr_b = thr[None, :]  # [1,T]
        rows = np.arange(r)[:, None]
        cols = np.arange(t)[None, :]
        reach = overlap >= thr.min()
        # Only ground truth within reach of a detection (usually 1-3 boxes) can match it at any
        # threshold, so each step works on [R,T,k] slices instead of [R,T,M].
        for d in np.flatnonzero(reach.any(1)):
            cand = np.flatnonzero(reach[d])
            ov = overlap[d, cand]  # [k]
            ig = gt_ign[:, None, cand]  # [R,1,k]
            cl = claimed[:, :, cand]  # [R,T,k]
            reg = np.where(~ig & ~cl, ov, -1.0)
            best = reg.argmax(-1)
            hit = reg[rows, cols, best] >= thr_b
            alt = np.where(ig & (crowd[cand] | ~cl), ov, -1.0)  # crowd boxes absorb any number
            best_i = alt.argmax(-1)
            hit_i = ~hit & (alt[rows, cols, best_i] >= thr_b)
            tp[d], ign[d] = hit, hit_i
            rr, tt = np.nonzero(hit)
            claimed[rr, tt, cand[best[rr, tt]]] = True
            rr, tt = np.nonzero(hit_i & ~crowd[cand][best_i])
            claimed[rr, tt, cand[best_i[rr, tt]]] = True
    # Unmatched detections outside an area range are not that range's business (COCOeval).
    ign |= ~tp & ~ign & det_out.T[:, :, None]
    return tp, ign, ~gt_ign.T


# ----------------------------------------------------------------------------------------------
# AP


def compute_ap(recall, precision):
    """Ultralytics 8.4 `compute_ap` ('interp'): recall [n], precision [n] -> (ap, mpre [n+3], mrec [n+3]).

    Sentinels: (0, 1) in front; (last recall, 0) and (1, 0) behind. The middle one (new in 8.3/8.4)
    makes precision drop to 0 right after the highest recall reached, as COCO does; without it the
    linear interpolation to (1, 0) credited a triangle of area (1 - r_max) * p_last / 2.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)  # 101-point interpolation (COCO)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x)), mpre, mrec


def compute_ap_coco(recall, precision, rec_thresholds=np.linspace(0.0, 1.0, 101)) -> float:
    """pycocotools' AP: precision envelope, then the mean of the precision at the first point whose
    recall reaches each of the 101 recall thresholds (0 past the highest recall). No sentinels, no
    linear interpolation: a step function sampled, where Ultralytics integrates a ramp."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if not len(recall):
        return 0.0
    pr = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, rec_thresholds, side="left")
    return float(np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0).mean())


AP_METHODS = ("ultralytics", "coco")


def smooth(y, f: float = 0.05):
    """Box filter over a fraction f of the points (Ultralytics `smooth`)."""
    nf = round(len(y) * f * 2) // 2 + 1  # odd
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def ap_per_class(
    tp, conf, pred_cls, target_cls, ignored=None, eps: float = 1e-16, ap_method: str = "ultralytics"
) -> dict:
    """Per-class AP at T IoU thresholds and P/R/F1 curves (Ultralytics `ap_per_class`).

    tp [N,T] bool, conf [N], pred_cls [N], target_cls [M] (the instances), ignored [N,T] bool
    (detections left out at that threshold); ap_method "ultralytics" (`compute_ap`) or "coco"
    (`compute_ap_coco`, for cross-checks against pycocotools). Returns dict: classes [C] (the
    classes with instances), instances [C], ap [C,T], px [1000], p_curve, r_curve, f1_curve [C,1000]
    (vs confidence), prec_values [C,1000] (precision vs recall at the first threshold), p, r, f1 [C]
    at the max-F1 confidence, conf_max_f1.
    """
    if ap_method not in AP_METHODS:
        raise ValueError(f"ap_method must be one of {AP_METHODS}, got {ap_method!r}")
    tp = np.asarray(tp, bool)
    tp = tp[:, None] if tp.ndim == 1 else tp
    nt_ = tp.shape[1]
    ignored = np.zeros_like(tp) if ignored is None else np.asarray(ignored, bool).reshape(tp.shape)
    order = np.argsort(-np.asarray(conf), kind="stable")
    tp, ignored, conf, pred_cls = tp[order], ignored[order], np.asarray(conf)[order], np.asarray(pred_cls)[order]
    classes, nt = np.unique(np.asarray(target_cls, np.int64), return_counts=True)
    c = len(classes)
    px = np.linspace(0, 1, N_CURVE)
    ap = np.zeros((c, nt_))
    p_curve, r_curve, prec_values = np.zeros((c, N_CURVE)), np.zeros((c, N_CURVE)), np.zeros((c, N_CURVE))
    for ci, cls in enumerate(classes):
        sel = pred_cls == cls
        if not sel.any():
            continue
        for j in range(nt_):
            keep = ~ignored[sel, j]
            if not keep.any():
                continue
            hits = tp[sel, j][keep]
            tpc = np.cumsum(hits)
            fpc = np.cumsum(~hits)
            recall = tpc / (nt[ci] + eps)
            precision = tpc / (tpc + fpc)
            ap[ci, j], mpre, mrec = compute_ap(recall, precision)
            if ap_method == "coco":
                ap[ci, j] = compute_ap_coco(recall, precision)
            if j == 0:
                cj = conf[sel][keep]
                r_curve[ci] = np.interp(-px, -cj, recall, left=0)  # xp must increase: negate
                p_curve[ci] = np.interp(-px, -cj, precision, left=1)
                prec_values[ci] = np.interp(px, mrec, mpre)
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    i = int(smooth(f1_curve.mean(0), 0.1).argmax()) if c else 0
    return dict(
        classes=classes,
        instances=nt,
        ap=ap,
        px=px,
        p_curve=p_curve,
        r_curve=r_curve,
        f1_curve=f1_curve,
        prec_values=prec_values,
        p=p_curve[:, i],
        r=r_curve[:, i],
        f1=f1_curve[:, i],
        conf_max_f1=float(px[i]),
    )


# ----------------------------------------------------------------------------------------------
# Accumulator


class DetectionMetrics:
    """Accumulates per-image detections and ground truth, then computes mAP and friends.

    Usage: `m = DetectionMetrics(nc, names)`; `m.update(...)` per image (numpy, original image
    pixels); `m.compute()` -> dict (see `compute`). Other box geometries (rotated boxes) subclass it,
    changing the box layouts below and `_match`.
    """

    pred_box_shape: tuple[int, ...] = (4,)  # one detection's box (xyxy)
    gt_box_shape: tuple[int, ...] = (4,)  # one ground-truth box (xyxy)

    def __init__(
        self,
        nc: int,
        names: Sequence[str] | Mapping[int, str] | None = None,
        *,
        iou_thresholds=IOU_THRESHOLDS,
        ignore_overlap: str = "ioa",
        ap_method: str = "ultralytics",
    ):
        if nc < 1:
            raise ValueError(f"nc must be >= 1, got {nc}")
        if ignore_overlap not in ("ioa", "iou"):
            raise ValueError(f"ignore_overlap must be 'ioa' or 'iou', got {ignore_overlap!r}")
        self.nc = int(nc)
        if names is None:
            names = {i: str(i) for i in range(nc)}
        elif not isinstance(names, Mapping):
            names = dict(enumerate(names))
        if len(names) != nc:
            raise ValueError(f"names has {len(names)} entries for nc={nc}")
        self.names = dict(names)
        self.iou_thresholds = np.asarray(iou_thresholds, np.float64)
        if ap_method not in AP_METHODS:
            raise ValueError(f"ap_method must be one of {AP_METHODS}, got {ap_method!r}")
        self.ignore_overlap = ignore_overlap
        self.ap_method = ap_method
        self.reset()

    def reset(self):
        self._conf, self._cls, self._tp, self._ign = [], [], [], []
        self._gt_cls, self._gt_counted = [], []
        self._class_images = np.zeros(self.nc, np.int64)
        self.image_ids: list[Hashable] = []

    def __len__(self):
        return len(self.image_ids)

    def _check(self, image_id, what, x, shape_tail, n=None, integer=False):
        x = np.asarray(x)
        if x.size == 0:
            return np.zeros((0, *shape_tail), np.int64 if integer else np.float64)
        x = x.reshape(-1, *shape_tail) if shape_tail else x.reshape(-1)
        if n is not None and len(x) != n:
            raise ValueError(f"image {image_id!r}: {what} has {len(x)} rows, expected {n}")
        if not np.all(np.isfinite(x.astype(np.float64))):
            raise ValueError(f"image {image_id!r}: {what} holds non-finite values")
        if integer:
            xi = x.astype(np.int64)
            if np.any(xi != x) or np.any((xi < 0) | (xi >= self.nc)):
                bad = x[(xi != x) | (xi < 0) | (xi >= self.nc)][:5]
                raise ValueError(f"image {image_id!r}: {what} must be integers in [0, {self.nc}), got {bad}")
            return xi
        return x.astype(np.float64)

    def update(self, image_id, pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes, gt_ignore=None):
        """Add one image. pred_boxes [N,4] xyxy, pred_scores [N], pred_classes [N], gt_boxes [M,4] xyxy,
        gt_classes [M], gt_ignore [M] bool or None; all in original image pixels."""
        pb = self._check(image_id, "pred_boxes", pred_boxes, self.pred_box_shape)
        ps = self._check(image_id, "pred_scores", pred_scores, (), len(pb))
        pc = self._check(image_id, "pred_classes", pred_classes, (), len(pb), integer=True)
        gb = self._check(image_id, "gt_boxes", gt_boxes, self.gt_box_shape)
        gc = self._check(image_id, "gt_classes", gt_classes, (), len(gb), integer=True)
        if gt_ignore is None:
            gi = np.zeros(len(gb), bool)
        else:
            gi = np.asarray(gt_ignore, bool).reshape(-1)
            if len(gi) != len(gb):
                raise ValueError(f"image {image_id!r}: gt_ignore has {len(gi)} rows, expected {len(gb)}")
        order = np.argsort(-ps, kind="stable")
        pb, ps, pc = pb[order], ps[order], pc[order]
        tp, ign, counted = self._match(pb, pc, gb, gc, gi)
        self._conf.append(ps)
        self._cls.append(pc)
        self._tp.append(tp)
        self._ign.append(ign)
        self._gt_cls.append(gc)
        self._gt_counted.append(counted)
        self._class_images[np.unique(gc[~gi])] += 1
        self.image_ids.append(image_id)

    def _match(self, pred_boxes, pred_classes, gt_boxes, gt_classes, gt_ignore):
        """(tp, ignored, gt_counted) of one image, detections sorted by score (see `match_detections`)."""
        return match_detections(pred_boxes, pred_classes, gt_boxes, gt_classes, gt_ignore,
                                iou_thresholds=self.iou_thresholds, ignore_overlap=self.ignore_overlap)

    def compute(self, ap_method: str | None = None) -> dict:
        """AP by `ap_method` (default: the constructor's). Returns dict with
        map50, map50_95, map75, precision, recall, f1 (means over classes with instances, P/R/F1 at
        the max-F1 confidence conf_max_f1), fitness (0.1 map50 + 0.9 map50_95), map_small, map_medium,
        map_large (-1 when no instance falls in the range, as COCO), maps [nc] (per-class mAP50-95,
        the mean for absent classes), per_class (list of dict class, name, images, instances,
        precision, recall, ap50, ap50_95), images, instances, and curves (dict px, prec_values,
        p_curve, r_curve, f1_curve [C,1000], classes [C], names [C], ap50 [C]).
        """
        t = len(self.iou_thresholds)
        r = len(AREA_RANGES)
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0)
        cls = np.concatenate(self._cls) if self._cls else np.zeros(0, np.int64)
        tp = np.concatenate(self._tp) if self._tp else np.zeros((0, r, t), bool)
        ign = np.concatenate(self._ign) if self._ign else np.zeros((0, r, t), bool)
        gt_cls = np.concatenate(self._gt_cls) if self._gt_cls else np.zeros(0, np.int64)
        counted = np.concatenate(self._gt_counted) if self._gt_counted else np.zeros((0, r), bool)
        i50 = int(np.argmin(np.abs(self.iou_thresholds - 0.5)))
        i75 = int(np.argmin(np.abs(self.iou_thresholds - 0.75)))

        results = {}
        for ri, name in enumerate(AREA_RANGES):
            res = ap_per_class(
                tp[:, ri], conf, cls, gt_cls[counted[:, ri]], ign[:, ri], ap_method=ap_method or self.ap_method
            )
            results[name] = res
        res = results["all"]
        ap = res["ap"]
        has = len(res["classes"]) > 0
        map50_95 = float(ap.mean()) if has else 0.0
        map50 = float(ap[:, i50].mean()) if has else 0.0
        maps = np.full(self.nc, map50_95)
        maps[res["classes"]] = ap.mean(1)
        per_class = [
            dict(
                **{"class": int(c)},
                name=self.names[int(c)],
                images=int(self._class_images[c]),
                instances=int(n),
                precision=float(p),
                recall=float(rc),
                ap50=float(a[i50]),
                ap50_95=float(a.mean()),
            )
            for c, n, p, rc, a in zip(res["classes"], res["instances"], res["p"], res["r"], ap)
        ]

        def area_map(key):
            a = results[key]["ap"]
            return float(a.mean()) if len(a) else -1.0

        return dict(
            map50=map50,
            map50_95=map50_95,
            map75=float(ap[:, i75].mean()) if has else 0.0,
            precision=float(res["p"].mean()) if has else 0.0,
            recall=float(res["r"].mean()) if has else 0.0,
            f1=float(res["f1"].mean()) if has else 0.0,
            conf_max_f1=res["conf_max_f1"],
            fitness=0.1 * map50 + 0.9 * map50_95,
            map_small=area_map("small"),
            map_medium=area_map("medium"),
            map_large=area_map("large"),
            maps=maps,
            per_class=per_class,
            images=len(self.image_ids),
            instances=int(counted[:, 0].sum()),
            curves=dict(
                px=res["px"],
                prec_values=res["prec_values"],
                p_curve=res["p_curve"],
                r_curve=res["r_curve"],
                f1_curve=res["f1_curve"],
                classes=res["classes"],
                names=[self.names[int(c)] for c in res["classes"]],
                ap50=ap[:, i50] if has else np.zeros(0),
            ),
        )


# ----------------------------------------------------------------------------------------------
# Reporting


def format_results(result: dict, *, per_class: bool = True) -> str:
    """Ultralytics-style validation table (Class, Images, Instances, P, R, mAP50, mAP50-95)."""
    head = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    row = "{:>22}{:>11}{:>11}{:>11.3g}{:>11.3g}{:>11.3g}{:>11.3g}"
    lines = [head, row.format("all", result["images"], result["instances"], result["precision"],
                              result["recall"], result["map50"], result["map50_95"])]
    if per_class:
        for c in result["per_class"]:
            lines.append(row.format(str(c["name"])[:22], c["images"], c["instances"], c["precision"],
                                    c["recall"], c["ap50"], c["ap50_95"]))
    return "\n".join(lines)


def _figure():
    # A bare Figure (Agg canvas) instead of pyplot: no global backend switch, no leaked figures.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), tight_layout=True)
    return fig, fig.subplots(1, 1)


def plot_pr_curve(result: dict, path, title: str = "Precision-Recall Curve") -> Path:
    """Save the precision-recall curve at IoU 0.5 (Ultralytics' PR_curve.png) to `path`, titled `title`."""
    cur = result["curves"]
    px, py, names, ap50 = cur["px"], cur["prec_values"], cur["names"], cur["ap50"]
    fig, ax = _figure()
    if 0 < len(names) < 21:  # per-class legend only when it stays readable
        for y, n, a in zip(py, names, ap50):
            ax.plot(px, y, linewidth=1, label=f"{n} {a:.3f}")
    elif len(names):
        ax.plot(px, py.T, linewidth=1, color="grey")
    mean = py.mean(0) if len(names) else np.zeros_like(px)
    ax.plot(px, mean, linewidth=3, color="blue", label=f"all classes {result['map50']:.3f} mAP@0.5")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=250)
    return path


def plot_metric_curve(result: dict, path, metric: str = "f1") -> Path:
    """Save a metric-confidence curve (metric 'f1', 'precision' or 'recall'; Ultralytics' F1_curve.png)."""
    key = {"f1": "f1_curve", "precision": "p_curve", "recall": "r_curve"}.get(metric)
    if key is None:
        raise ValueError(f"metric must be 'f1', 'precision' or 'recall', got {metric!r}")
    cur = result["curves"]
    px, py, names = cur["px"], cur[key], cur["names"]
    label = {"f1": "F1", "precision": "Precision", "recall": "Recall"}[metric]
    fig, ax = _figure()
    if 0 < len(names) < 21:
        for y, n in zip(py, names):
            ax.plot(px, y, linewidth=1, label=str(n))
    elif len(names):
        ax.plot(px, py.T, linewidth=1, color="grey")
    y = smooth(py.mean(0), 0.1) if len(names) else np.zeros_like(px)
    ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    ax.set_xlabel("Confidence")
    ax.set_ylabel(label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(f"{label}-Confidence Curve")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=250)
    return path
