"""SSD's annotated data (weiliu89/caffe, branch ssd): AnnotatedDatum records, the label map,
``convert_annoset``, and the training-time box sampling and photometric transforms.

An AnnotatedDatum holds one image (a Datum, usually encoded) and its boxes, grouped by
class (``annotation_group``: ``group_label`` and ``annotation`` {instance_id,
NormalizedBBox}); box coordinates are normalised to [0, 1] of the image.

Per image at TRAIN, in SSD's order (``AnnotatedDataLayer::load_batch``):

1. distort (``distort_param``): brightness (add ±delta), contrast (scale), saturation and
   hue (in HSV), each with its probability; the colour steps in either of SSD's two
   orders (``random_order_prob`` shuffles them);
2. expand (``expand_param``): with ``prob``, place the image at a random offset on a
   canvas ``ratio ∈ [1, max_expand_ratio]`` times larger, filled with the mean;
3. batch samplers: each ``batch_sampler`` draws up to ``max_trials`` boxes of scale and
   aspect ratio in its ranges, keeping those meeting its ``sample_constraint`` (Jaccard
   overlap / coverage with some ground-truth box) until ``max_sample`` are found; one box
   of all found is chosen at random and the image cropped to it; boxes whose centre lies
   outside the crop are dropped (``emit_constraint`` CENTER), the rest clipped;
4. resize (``resize_param``, WARP) with an interpolation chosen from ``interp_mode``;
5. mirror (``transform_param.mirror``): with probability ½, flip the image and the boxes;
6. ``(pixel - mean_value) · scale``, channels first.

At TEST only steps 4 and 6 run.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

import numpy as np
from PIL import Image

from ..errors import DataError
from ..protos import caffe_pb2
from .images import decode_image, encode_image, read_image
from .lmdb_io import LMDBReader, LMDBWriter, array_to_datum
from .sources import read_pair_list

#: Columns of the label blob SSD's data layer gives: one row per box of the batch.
LABEL_COLUMNS = ("item_id", "group_label", "instance_id", "xmin", "ymin", "xmax", "ymax", "difficult")


# ---------------------------------------------------------------------------------- label map
def read_label_map(path: str) -> dict[str, int]:
    """``name -> label`` of a LabelMap prototxt (SSD's labelmap_voc.prototxt)."""
    from google.protobuf import text_format
    label_map = caffe_pb2.LabelMap()
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), label_map)
    except OSError as exc:
        raise DataError(f"label map {path}: cannot read it ({exc.strerror})") from None
    except text_format.ParseError as exc:
        raise DataError(f"label map {path}: not a LabelMap prototxt ({exc})") from None
    return {item.name: item.label for item in label_map.item}


# ---------------------------------------------------------------------------------- writing
def annotations_from_xml(path: str, label_map: dict[str, int]):
    """(width, height, [(label, xmin, ymin, xmax, ymax, difficult)]) of a PASCAL VOC XML file, in pixels."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise DataError(f"annotation {path}: cannot read it as VOC XML ({exc})") from None
    size = root.find("size")
    width, height = (int(size.findtext(k)) for k in ("width", "height")) if size is not None else (0, 0)
    boxes = []
    for obj in root.iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in label_map:
            raise DataError(f"annotation {path}: class '{name}' is not in the label map")
        box = obj.find("bndbox")
        coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append((label_map[name], *coords, obj.findtext("difficult", "0").strip() == "1"))
    return width, height, boxes


def annotations_from_txt(path: str, label_map: dict[str, int]):
    """Boxes of SSD's txt format: one ``label xmin ymin xmax ymax`` line per box (label a name or a number)."""
    boxes = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise DataError(f"annotation {path}: cannot read it ({exc.strerror})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 5:
            raise DataError(f"annotation {path}:{number}: expected 'label xmin ymin xmax ymax', got '{line}'")
        label = label_map.get(parts[0])
        if label is None:
            try:
                label = int(parts[0])
            except ValueError:
                raise DataError(f"annotation {path}:{number}: class '{parts[0]}' is not in the label map") from None
        boxes.append((label, *map(float, parts[1:]), False))
    return 0, 0, boxes


def annotated_datum(image_path: str, anno_path: str, label_map: dict[str, int], label_type: str = "xml",
                    resize_height: int = 0, resize_width: int = 0, encoded: bool = True,
                    encode_type: str = "jpg") -> caffe_pb2.AnnotatedDatum:
    """One AnnotatedDatum (type BBOX) from an image and its annotation file (VOC XML or txt)."""
    pixels = read_image(image_path, 0, 0, True)                 # C×H×W BGR uint8
    height, width = pixels.shape[1:]
    reader = annotations_from_xml if label_type == "xml" else annotations_from_txt
    _, _, boxes = reader(anno_path, label_map)
    if resize_height and resize_width:
        pixels = read_image(image_path, resize_height, resize_width, True)
    datum = caffe_pb2.Datum(data=encode_image(pixels, encode_type), encoded=True) if encoded else array_to_datum(pixels)
    record = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
    record.datum.CopyFrom(datum)
    groups: dict[int, caffe_pb2.AnnotationGroup] = {}
    for instance, (label, xmin, ymin, xmax, ymax, difficult) in enumerate(boxes):
        if label not in groups:
            groups[label] = record.annotation_group.add(group_label=label)
        group = groups[label]
        annotation = group.annotation.add(instance_id=len(group.annotation))
        annotation.bbox.CopyFrom(caffe_pb2.NormalizedBBox(
            xmin=xmin / width, ymin=ymin / height, xmax=xmax / width, ymax=ymax / height, difficult=difficult))
    return record


def convert_annoset(root: str, list_file: str, db_path: str, label_map_file: str, label_type: str = "xml",
                    resize_height: int = 0, resize_width: int = 0, encoded: bool = True, encode_type: str = "jpg",
                    shuffle: bool = False) -> int:
    """SSD's convert_annoset: ``image annotation`` lines into an LMDB of AnnotatedDatum.

    Paths are relative to ``root``; annotations are VOC XML (``label_type="xml"``) or
    ``label xmin ymin xmax ymax`` text files (``"txt"``), in pixels. Returns the record count.
    """
    from .. import random as dl_random
    label_map = read_label_map(label_map_file)
    entries = read_pair_list(list_file, expected="image annotation")
    if shuffle:
        entries = [entries[i] for i in dl_random.rng().permutation(len(entries))]
    with LMDBWriter(db_path) as db:
        for index, (image, annotation) in enumerate(entries):
            record = annotated_datum(os.path.join(root, image), os.path.join(root, annotation), label_map,
                                     label_type, resize_height, resize_width, encoded, encode_type)
            db.put(f"{index:08d}_{image}", record)
    return len(entries)


# ---------------------------------------------------------------------------------- reading
class AnnotatedReader(LMDBReader):
    """AnnotatedDatum records of an LMDB: ``read()`` gives ``(where, H×W×3 BGR uint8, boxes)``.

    ``boxes`` is a K×7 float array: group_label, instance_id, xmin, ymin, xmax, ymax, difficult.
    """

    def _decode(self, key, value):
        where = f"LMDB {self.path} key {key.decode(errors='replace')!r}"
        record = caffe_pb2.AnnotatedDatum()
        try:
            record.ParseFromString(value)
        except Exception:  # protobuf's DecodeError: a record that is not an AnnotatedDatum
            raise DataError(f"{where}: not an AnnotatedDatum record") from None
        datum = record.datum
        if datum.encoded:
            image = decode_image(datum.data, True, where)
        else:
            image = np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)
        rows = [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, a.bbox.difficult)
                for g in record.annotation_group for a in g.annotation]
        boxes = np.array(rows, dtype=np.float64).reshape(-1, 7)
        return key.decode(errors="replace"), np.ascontiguousarray(image.transpose(1, 2, 0)), boxes


# ---------------------------------------------------------------------------------- box math
def jaccard(box, boxes):
    """IoU of one normalised box with each of ``boxes`` (K×4)."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def coverage(box, boxes, of_sample: bool):
    """Intersection over the sample's area (``of_sample``) or over each object's area."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) if of_sample else (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return w * h / np.maximum(area, 1e-12)


def satisfies(sample, gt, constraint) -> bool:
    """SSD's SatisfySampleConstraint: some ground-truth box meets every bound that is set."""
    if not len(gt):
        return True
    fields = [("min_jaccard_overlap", "max_jaccard_overlap", jaccard(sample, gt)),
              ("min_sample_coverage", "max_sample_coverage", coverage(sample, gt, True)),
              ("min_object_coverage", "max_object_coverage", coverage(sample, gt, False))]
    ok = np.ones(len(gt), dtype=bool)
    constrained = False
    for low, high, values in fields:
        if constraint.HasField(low):
            ok &= values >= getattr(constraint, low)
            constrained = True
        if constraint.HasField(high):
            ok &= values <= getattr(constraint, high)
            constrained = True
    return bool(ok.any()) if constrained else True


def sample_boxes(samplers, gt, rng) -> list[np.ndarray]:
    """Every box the batch samplers find for ground truth ``gt`` (K×4 normalised)."""
    found = []
    for batch_sampler in samplers:
        s = batch_sampler.sampler
        kept = 0
        for _ in range(batch_sampler.max_trials):
            if batch_sampler.HasField("max_sample") and kept >= batch_sampler.max_sample:
                break
            scale = rng.uniform(s.min_scale, s.max_scale)
            low = max(s.min_aspect_ratio, scale ** 2)
            high = min(s.max_aspect_ratio, 1 / scale ** 2)
            ratio = rng.uniform(low, high) if high > low else low
            w, h = min(scale * np.sqrt(ratio), 1.0), min(scale / np.sqrt(ratio), 1.0)
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            box = np.array([x, y, x + w, y + h])
            if satisfies(box, gt, batch_sampler.sample_constraint):
                found.append(box)
                kept += 1
    return found


def crop_boxes(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Boxes (K×7 rows) moved into ``crop``'s frame; those whose centre falls outside are dropped."""
    xy = boxes[:, 2:6]
    cx, cy = (xy[:, 0] + xy[:, 2]) / 2, (xy[:, 1] + xy[:, 3]) / 2
    inside = (cx >= crop[0]) & (cx <= crop[2]) & (cy >= crop[1]) & (cy <= crop[3])
    out = boxes[inside].copy()
    w, h = crop[2] - crop[0], crop[3] - crop[1]
    out[:, [2, 4]] = np.clip((out[:, [2, 4]] - crop[0]) / w, 0, 1)
    out[:, [3, 5]] = np.clip((out[:, [3, 5]] - crop[1]) / h, 0, 1)
    return out


# ---------------------------------------------------------------------------------- pixels
_INTERP = {1: Image.BILINEAR, 2: Image.BOX, 3: Image.NEAREST, 4: Image.BICUBIC, 5: Image.LANCZOS}


def distort(image: np.ndarray, p, rng) -> np.ndarray:
    """SSD's RandomBrightness/Contrast/Saturation/Hue on an H×W×3 BGR uint8 image."""
    def brightness(img):
        if rng.random() < p.brightness_prob:
            img = np.clip(img.astype(np.float32) + rng.uniform(-p.brightness_delta, p.brightness_delta), 0, 255)
        return img.astype(np.uint8)

    def contrast(img):
        if rng.random() < p.contrast_prob:
            img = np.clip(img.astype(np.float32) * rng.uniform(p.contrast_lower, p.contrast_upper), 0, 255)
        return img.astype(np.uint8)

    def hsv(img):
        change_s, change_h = rng.random() < p.saturation_prob, rng.random() < p.hue_prob
        if not (change_s or change_h):
            return img
        h, s, v = (np.asarray(c, dtype=np.float32) for c in Image.fromarray(img[:, :, ::-1].copy()).convert("HSV").split())
        if change_s:
            s = np.clip(s * rng.uniform(p.saturation_lower, p.saturation_upper), 0, 255)
        if change_h:
            h = (h + rng.uniform(-p.hue_delta, p.hue_delta) * 256 / 180) % 256   # OpenCV's hue is 0-180
        merged = Image.merge("HSV", [Image.fromarray(c.astype(np.uint8)) for c in (h, s, v)]).convert("RGB")
        return np.asarray(merged)[:, :, ::-1].copy()

    image = brightness(image)
    steps = [contrast, hsv] if rng.random() < 0.5 else [hsv, contrast]
    if rng.random() < p.random_order_prob:
        steps = [steps[i] for i in rng.permutation(2)]
    for step in steps:
        image = step(image)
    return image


def expand(image: np.ndarray, boxes: np.ndarray, p, mean, rng):
    """SSD's ExpandImage: the image on a larger canvas of the mean colour, boxes moved with it."""
    if rng.random() >= p.prob or p.max_expand_ratio <= 1:
        return image, boxes
    ratio = rng.uniform(1, p.max_expand_ratio)
    h, w = image.shape[:2]
    eh, ew = int(h * ratio), int(w * ratio)
    top, left = int(rng.uniform(0, eh - h)), int(rng.uniform(0, ew - w))
    canvas = np.empty((eh, ew, 3), np.uint8)
    canvas[...] = np.clip(np.round(mean), 0, 255).astype(np.uint8)
    canvas[top:top + h, left:left + w] = image
    out = boxes.copy()
    out[:, [2, 4]] = (out[:, [2, 4]] * w + left) / ew
    out[:, [3, 5]] = (out[:, [3, 5]] * h + top) / eh
    return canvas, out


def resize(image: np.ndarray, p, rng) -> np.ndarray:
    """WARP to (height, width) with one of ``interp_mode`` (bilinear when none is given)."""
    if not (p.height and p.width):
        return image
    if p.resize_mode not in (0, caffe_pb2.ResizeParameter.WARP):
        raise DataError("resize_param.resize_mode: only WARP is supported")
    modes = list(p.interp_mode) or [caffe_pb2.ResizeParameter.LINEAR]
    method = _INTERP[modes[int(rng.integers(len(modes)))]]
    return np.asarray(Image.fromarray(image).resize((p.width, p.height), method))
