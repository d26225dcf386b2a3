"""MultiBoxLoss (SSD, weiliu89/caffe branch ssd): matching, hard negative mining, and the
localisation and confidence losses of a detector.

Bottoms: ``loc`` (N×P·4 box offsets), ``conf`` (N×P·C class scores), ``priors`` (1×2×P·4:
prior boxes, then their variances, as PriorBox gives them) and ``label`` (1×1×G×8, the
ground truth as AnnotatedData gives it; rows with item_id -1 are padding).

Per image (``multibox_loss_param``):

1. match (``match_type``): BIPARTITE pairs each ground-truth box with its best free prior
   in order of decreasing overlap (Jaccard overlap > 1e-6); PER_PREDICTION then also matches
   every other prior to its best ground truth when that overlap ≥ ``overlap_threshold``;
2. encode the matched ground truth against its prior (``code_type``; CENTER_SIZE:
   ``((g_c - p_c)/p_size/v, log(g_size/p_size)/v)``, CORNER: ``(g - p)/v``);
3. mine negatives (MAX_NEGATIVE): of the unmatched priors whose best overlap is below
   ``neg_overlap``, keep the ``neg_pos_ratio·positives`` with the largest confidence loss
   against the background class;
4. ``loss = (loc_weight·Σ_matched smoothL1(loc - target) + Σ_{positives, negatives}
   -log softmax(conf)[label]) / normalizer``, with ``normalizer`` from ``loss_param``
   (VALID: the number of matches, BATCH_SIZE: N, FULL: N·P, NONE: 1; at least 1).

Backward treats the matching and mining as constants, as SSD does: the smooth-L1 gradient
at matched priors and ``softmax - onehot`` at the chosen ones, times
``loss_weight / normalizer``. The matching runs on the host (it is a sequential greedy
loop); the gradients are written back with the array module.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..protos import caffe_pb2
from .detection import jaccard_overlap
from .loss import LossLayer, normalization_mode
from .registry import register

P = caffe_pb2.MultiBoxLossParameter
CODE = caffe_pb2.PriorBoxParameter


def match(gt: np.ndarray, priors: np.ndarray, per_prediction: bool, threshold: float):
    """(index of the matched ground truth per prior or -1, best overlap per prior)."""
    overlaps = np.stack([jaccard_overlap(g, priors) for g in gt]) if len(gt) else np.zeros((0, len(priors)))
    matched = np.full(len(priors), -1, dtype=np.int64)
    best = overlaps.max(axis=0) if len(gt) else np.zeros(len(priors))
    free = overlaps.copy()
    free[free <= 1e-6] = -1
    for _ in range(len(gt)):                    # bipartite: the globally best free pair, one gt at a time
        g, p = np.unravel_index(np.argmax(free), free.shape)
        if free[g, p] <= 0:
            break
        matched[p] = g
        free[g, :] = -1
        free[:, p] = -1
    if per_prediction and len(gt):
        others = (matched == -1)
        best_gt = overlaps.argmax(axis=0)
        take = others & (best >= threshold)
        matched[take] = best_gt[take]
    return matched, best


def encode(gt: np.ndarray, priors: np.ndarray, variances: np.ndarray, code_type: int) -> np.ndarray:
    """SSD's EncodeBBox (variance not encoded in the target): the regression targets."""
    if code_type == CODE.CORNER:
        return (gt - priors) / variances
    if code_type != CODE.CENTER_SIZE:
        raise ValueError("code_type")
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    pcx, pcy = (priors[:, 0] + priors[:, 2]) / 2, (priors[:, 1] + priors[:, 3]) / 2
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gcx, gcy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    return np.stack([(gcx - pcx) / pw / variances[:, 0], (gcy - pcy) / ph / variances[:, 1],
                     np.log(gw / pw) / variances[:, 2], np.log(gh / ph) / variances[:, 3]], axis=1)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@register
class MultiBoxLossLayer(LossLayer):
    """SSD's detection loss: smooth-L1 on matched boxes + softmax over positives and mined negatives."""

    type = "MultiBoxLoss"
    exact_num_bottoms = 4
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error("multibox_loss_param.num_classes is required")
        unsupported = [(p.loc_loss_type != P.SMOOTH_L1, "loc_loss_type other than SMOOTH_L1"),
                       (p.conf_loss_type != P.SOFTMAX, "conf_loss_type other than SOFTMAX"),
                       (not p.share_location, "share_location: false"),
                       (p.mining_type == P.HARD_EXAMPLE, "mining_type HARD_EXAMPLE"),
                       (p.encode_variance_in_target, "encode_variance_in_target: true"),
                       (not p.use_prior_for_matching, "use_prior_for_matching: false"),
                       (p.code_type not in (CODE.CENTER_SIZE, CODE.CORNER), "code_type CORNER_SIZE")]
        for bad, what in unsupported:
            if bad:
                raise self.error(f"multibox_loss_param: {what} is not supported")
        self.classes = int(p.num_classes)
        self.mode = normalization_mode(self, "VALID")

    def reshape(self, bottoms, tops):
        loc, conf, priors = bottoms[0], bottoms[1], bottoms[2]
        n = loc.shape[0] if loc.num_axes else 0
        count = priors.count // 8 if priors.num_axes == 3 and priors.shape[1] == 2 else -1
        if count <= 0 or priors.count != count * 8:
            raise self.error(f"bottom 2 (priors) must be 1×2×P·4, got shape {priors.shape}")
        if loc.count != n * count * 4 or conf.count != n * count * self.classes:
            raise self.error(f"bottoms 0 and 1 must hold {count} priors × 4 offsets and × {self.classes} classes "
                             f"per image, got shapes {loc.shape} and {conf.shape}")
        if bottoms[3].count % 8:
            raise self.error(f"bottom 3 (ground truth) must be 1×1×G×8, got shape {bottoms[3].shape}")
        self.num, self.priors = n, count
        tops[0].reshape(())

    def allow_backward_to(self, bottom_index):
        return bottom_index < 2

    def forward_cpu(self, bottoms, tops):
        p = self.param.multibox_loss_param
        n, count, classes = self.num, self.priors, self.classes
        loc = to_numpy(bottoms[0].data).reshape(n, count, 4).astype(np.float64)
        conf = to_numpy(bottoms[1].data).reshape(n, count, classes).astype(np.float64)
        prior_blob = to_numpy(bottoms[2].data).reshape(2, count, 4).astype(np.float64)
        priors, variances = prior_blob[0], prior_blob[1]
        gt_rows = to_numpy(bottoms[3].data).reshape(-1, 8).astype(np.float64)
        gt_rows = gt_rows[gt_rows[:, 0] >= 0]
        if not p.use_difficult_gt:
            gt_rows = gt_rows[gt_rows[:, 7] == 0]
        background = int(p.background_label_id)
        log_p = log_softmax(conf)
        self.loc_grad = np.zeros_like(loc)
        self.conf_grad = np.zeros_like(conf)
        loc_loss = conf_loss = 0.0
        matches = 0
        for i in range(n):
            gt = gt_rows[gt_rows[:, 0] == i]
            matched, best = match(gt[:, 3:7], priors, p.match_type == P.PER_PREDICTION, p.overlap_threshold)
            positive = matched >= 0
            chosen = positive.copy()
            labels = np.full(count, background, dtype=np.int64)
            if positive.any():
                labels[positive] = gt[matched[positive], 1].astype(np.int64)
                target = encode(gt[matched[positive], 3:7], priors[positive], variances[positive], p.code_type)
                d = loc[i, positive] - target
                small = np.abs(d) < 1
                loc_loss += np.where(small, 0.5 * d * d, np.abs(d) - 0.5).sum()
                self.loc_grad[i, positive] = np.where(small, d, np.sign(d))
            if p.mining_type == P.MAX_NEGATIVE and (p.do_neg_mining if p.HasField("do_neg_mining") else True):
                candidates = np.flatnonzero(~positive & (best < p.neg_overlap))
                wanted = min(int(positive.sum() * p.neg_pos_ratio), candidates.size)
                if wanted:
                    background_loss = -log_p[i, candidates, background]
                    order = np.argsort(-background_loss, kind="stable")[:wanted]
                    chosen[candidates[order]] = True
            elif p.mining_type == P.NONE:
                chosen[:] = True
            picked = np.flatnonzero(chosen)
            conf_loss -= log_p[i, picked, labels[picked]].sum()
            probabilities = np.exp(log_p[i, picked])
            probabilities[np.arange(picked.size), labels[picked]] -= 1
            self.conf_grad[i, picked] = probabilities
            matches += int(positive.sum())
        self.normalizer = self._normalizer(matches)
        tops[0].data[...] = (p.loc_weight * loc_loss + conf_loss) / self.normalizer
        self.matches = matches

    def _normalizer(self, matches: int) -> float:
        n = {"VALID": matches, "BATCH_SIZE": self.num, "FULL": self.num * self.priors, "NONE": 1}
        if self.mode not in n:
            raise self.error(f"loss_param.normalization {self.mode} is not supported")
        return float(max(n[self.mode], 1))

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        scale = float(to_numpy(tops[0].diff)) / self.normalizer
        if propagate_down[0]:
            grad = self.loc_grad * (scale * self.param.multibox_loss_param.loc_weight)
            bottoms[0].diff[...] = xp.asarray(grad.reshape(bottoms[0].shape).astype(np.float32))
        if propagate_down[1]:
            bottoms[1].diff[...] = xp.asarray((self.conf_grad * scale).reshape(bottoms[1].shape).astype(np.float32))
