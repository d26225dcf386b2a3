"""A pycaffe-style region proposal layer, written for dlsoft's tests in the shape of
py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer`` (not its code): anchors at every
feature-map cell, box deltas applied, boxes clipped to the image, small ones dropped,
the best ``pre_nms_topN`` by objectness kept, non-maximum suppression, the best
``post_nms_topN`` output as ``(batch 0, x1, y1, x2, y2)`` rows.

Test-time settings (py-faster-rcnn's cfg.TEST): pre_nms_topN 6000, post_nms_topN 300,
nms_thresh 0.7, min_size 16. ``param_str`` is a YAML mapping (``'feat_stride': 16``).
"""
import numpy as np
import yaml

try:  # pycaffe scripts subclass caffe.Layer; dlsoft's Python layers need no base class
    import caffe
    Base = caffe.Layer
except ImportError:
    Base = object


def anchors(base=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    """The A = 9 reference boxes centred on the first cell, as (x1, y1, x2, y2)."""
    centre = (base - 1) / 2.0
    out = []
    for ratio in ratios:
        w = np.round(np.sqrt(base * base / ratio))
        h = np.round(w * ratio)
        for scale in scales:
            ws, hs = w * scale, h * scale
            out.append([centre - (ws - 1) / 2, centre - (hs - 1) / 2, centre + (ws - 1) / 2, centre + (hs - 1) / 2])
    return np.array(out)


def apply_deltas(boxes, deltas):
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    px = deltas[:, 0] * widths + cx
    py = deltas[:, 1] * heights + cy
    pw = np.exp(np.minimum(deltas[:, 2], 10)) * widths
    ph = np.exp(np.minimum(deltas[:, 3], 10)) * heights
    return np.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], axis=1)


def nms(boxes, scores, threshold):
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size:
        i = order[0]
        keep.append(i)
        w = np.maximum(0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        overlap = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][overlap <= threshold]
    return np.array(keep, dtype=np.int64)


class ProposalLayer(Base):
    def setup(self, bottom, top):
        params = yaml.safe_load(self.param_str) or {}
        self.feat_stride = params["feat_stride"]
        self.anchors = anchors()
        top[0].reshape(1, 5)

    def reshape(self, bottom, top):
        pass  # the row count is known only after the forward pass

    def forward(self, bottom, top):
        a = self.anchors.shape[0]
        scores = np.asarray(bottom[0].data)[:, a:, :, :]          # foreground probabilities
        deltas = np.asarray(bottom[1].data)
        im_h, im_w, im_scale = np.asarray(bottom[2].data)[0]
        height, width = scores.shape[-2:]
        sx, sy = np.meshgrid(np.arange(width) * self.feat_stride, np.arange(height) * self.feat_stride)
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
        boxes = (self.anchors[None, :, :] + shifts[:, None, :]).reshape(-1, 4)
        deltas = deltas.transpose((0, 2, 3, 1)).reshape(-1, 4)
        scores = scores.transpose((0, 2, 3, 1)).reshape(-1)
        boxes = apply_deltas(boxes, deltas)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, im_w - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, im_h - 1)
        big = ((boxes[:, 2] - boxes[:, 0] + 1) >= 16 * im_scale) & ((boxes[:, 3] - boxes[:, 1] + 1) >= 16 * im_scale)
        boxes, scores = boxes[big], scores[big]
        order = scores.argsort()[::-1][:6000]
        boxes, scores = boxes[order], scores[order]
        keep = nms(boxes, scores, 0.7)[:300]
        rois = np.hstack([np.zeros((keep.size, 1)), boxes[keep]]).astype(np.float32)
        top[0].reshape(*rois.shape)
        top[0].data[...] = rois

    def backward(self, top, propagate_down, bottom):
        pass
