"""SSD training (weiliu89/caffe branch ssd): convert-annoset, AnnotatedData, MultiBoxLoss,
DetectionEvaluate, and MobileNet-SSD's own train.prototxt (../shared/caffe-wild, unchanged)
training on a small annotated LMDB made here from drawn images and their boxes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gradcheck import check_gradient, covers, run_layer
from PIL import Image, ImageDraw

from dlsoft.cli import cli
from dlsoft.data import annotated
from dlsoft.layers.detection_evaluate import average_precision
from dlsoft.layers.multibox_loss import encode, match

GPU_COVERS = ("AnnotatedData", "MultiBoxLoss", "DetectionEvaluate")

ROOT = Path(__file__).resolve().parents[1]
SSD = ROOT.parent / "shared" / "caffe-wild" / "chuanqi305+MobileNet-SSD"
LABEL_MAP = SSD / "create_lmdb" / "code" / "labelmap.prototxt"
needs_ssd = pytest.mark.skipif(not SSD.is_dir(), reason="../shared/caffe-wild is absent")
CLASSES = {"car": (200, 40, 40), "bus": (40, 200, 40), "motorcycle": (40, 40, 200)}  # names of the SSD label map


def make_dataset(folder: Path, count=12, seed=0) -> Path:
    """Images with one to three filled rectangles, each class its colour, and VOC XML boxes."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        w, h = int(rng.integers(90, 160)), int(rng.integers(90, 160))
        image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(image)
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            name = list(CLASSES)[int(rng.integers(len(CLASSES)))]
            bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=CLASSES[name])
            objects.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x}</xmin>"
                           f"<ymin>{y}</ymin><xmax>{x + bw}</xmax><ymax>{y + bh}</ymax></bndbox></object>")
        image.save(folder / f"img{i}.jpg", quality=95)
        (folder / f"img{i}.xml").write_text(f"<annotation><size><width>{w}</width><height>{h}</height><depth>3"
                                            f"</depth></size>{''.join(objects)}</annotation>")
        lines.append(f"img{i}.jpg img{i}.xml")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


@pytest.fixture(scope="module")
def annoset(tmp_path_factory):
    if not LABEL_MAP.is_file():
        pytest.skip("../shared/caffe-wild is absent")
    folder = tmp_path_factory.mktemp("ssd")
    make_dataset(folder)
    result = CliRunner().invoke(cli, ["convert-annoset", str(folder), str(folder / "list.txt"),
                                      str(folder / "trainval_lmdb"), "--label-map-file", str(LABEL_MAP)])
    assert result.exit_code == 0, result.output
    assert "Wrote 12 annotated images" in result.output
    return folder


def test_convert_annoset_records_hold_the_boxes(annoset):
    reader = annotated.AnnotatedReader(annoset / "trainval_lmdb")
    try:
        _, image, boxes = reader.read()
    finally:
        reader.close()
    first = Image.open(annoset / "img0.jpg")
    assert image.shape == (first.height, first.width, 3)
    xml_boxes = annotated.annotations_from_xml(str(annoset / "img0.xml"), annotated.read_label_map(str(LABEL_MAP)))[2]
    assert len(boxes) == len(xml_boxes)
    expected = sorted((label, x1 / first.width, y1 / first.height) for label, x1, y1, *_ in xml_boxes)
    got = sorted((int(b[0]), b[2], b[3]) for b in boxes)
    for (l1, x1, y1), (l2, x2, y2) in zip(expected, got):
        assert l1 == l2 and abs(x1 - x2) < 1e-6 and abs(y1 - y2) < 1e-6


def test_convert_annoset_errors_name_the_file(tmp_path):
    if not LABEL_MAP.is_file():
        pytest.skip("../shared/caffe-wild is absent")
    (tmp_path / "a.xml").write_text("<annotation><object><name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                    "<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / "list.txt").write_text("a.jpg a.xml\n")
    result = CliRunner().invoke(cli, ["convert-annoset", str(tmp_path), str(tmp_path / "list.txt"),
                                      str(tmp_path / "db"), "--label-map-file", str(LABEL_MAP)])
    assert result.exit_code == 2 and "a.xml" in result.output and "unicorn" in result.output


def annotated_layer(annoset, phase="TRAIN", extra=""):
    return (f'type: "AnnotatedData" top: "data" top: "label" data_param {{ source: "{annoset / "trainval_lmdb"}" '
            f'batch_size: 4 }} transform_param {{ mean_value: 127.5 scale: 0.007843 mirror: true '
            f'resize_param {{ height: 64 width: 48 interp_mode: LINEAR interp_mode: NEAREST }} {extra} }} '
            'annotated_data_param { batch_sampler { max_sample: 1 max_trials: 1 } '
            'batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 } '
            'sample_constraint { min_jaccard_overlap: 0.3 } max_sample: 1 max_trials: 50 } }')


@covers("AnnotatedData", "reference")
def test_annotated_data_test_phase_gives_the_stored_boxes(annoset):
    layer, _, tops = run_layer(annotated_layer(annoset), [], phase="TEST", num_tops=2)
    try:
        assert tops[0].shape == (4, 3, 64, 48)
        label = tops[1].data.reshape(-1, 8)
        reader = annotated.AnnotatedReader(annoset / "trainval_lmdb")
        stored = [reader.read()[2] for _ in range(4)]
        reader.close()
        assert len(label) == sum(len(b) for b in stored)
        for item, boxes in enumerate(stored):   # at TEST only the resize: normalised boxes unchanged
            rows = label[label[:, 0] == item]
            np.testing.assert_allclose(np.sort(rows[:, 3:7], axis=0), np.sort(boxes[:, 2:6], axis=0), atol=1e-6)
        assert abs(float(tops[0].data.max())) <= 1.01 and float(tops[0].data.min()) >= -1.01  # (x - 127.5)/127.5
    finally:
        layer.close()


def test_annotated_data_train_phase_samples_distorts_and_expands(annoset):
    extra = ('distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5 '
             'contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5 '
             'saturation_upper: 1.5 } expand_param { prob: 0.5 max_expand_ratio: 4 } emit_constraint { emit_type: CENTER }')
    layer, bottoms, tops = run_layer(annotated_layer(annoset, extra=extra), [], num_tops=2)
    try:
        for _ in range(5):
            label = tops[1].data.reshape(-1, 8)
            boxes = label[label[:, 0] >= 0]
            assert ((boxes[:, 3:7] >= 0) & (boxes[:, 3:7] <= 1)).all()
            assert (boxes[:, 5] >= boxes[:, 3]).all() and (boxes[:, 6] >= boxes[:, 4]).all()
            assert set(boxes[:, 1].astype(int)) <= {1, 2, 3} and (boxes[:, 0] < 4).all()
            layer.forward(bottoms, tops)
    finally:
        layer.close()


def test_annotated_data_missing_source_is_one_line(tmp_path):
    from dlsoft.errors import DlsoftError
    with pytest.raises(DlsoftError) as info:
        run_layer(annotated_layer(tmp_path), [], num_tops=2)
    assert "\n" not in str(info.value) and "trainval_lmdb" in str(info.value)


# ---- MultiBoxLoss -----------------------------------------------------------------------------
PRIORS = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0],
                   [0.1, 0.1, 0.6, 0.6], [0.25, 0.25, 0.75, 0.75]])
VARIANCE = np.array([0.1, 0.1, 0.2, 0.2])


def prior_blob():
    return np.stack([PRIORS.reshape(-1), np.tile(VARIANCE, len(PRIORS))]).reshape(1, 2, -1).astype(np.float32)


GT = np.array([[0, 1, 0, 0.05, 0.0, 0.5, 0.55, 0], [0, 2, 0, 0.55, 0.5, 1.0, 0.95, 0],
               [1, 3, 0, 0.2, 0.2, 0.7, 0.7, 0]], dtype=np.float32).reshape(1, 1, 3, 8)
MBOX = ('type: "MultiBoxLoss" multibox_loss_param { num_classes: 4 overlap_threshold: 0.5 neg_pos_ratio: 1 '
        'neg_overlap: 0.5 code_type: CENTER_SIZE match_type: PER_PREDICTION }')


def mbox_inputs(seed=0):
    rng = np.random.default_rng(seed)
    loc = rng.normal(0, 0.5, (2, len(PRIORS) * 4)).astype(np.float32)
    # conf values far apart, so finite differences never reorder the mined negatives
    conf = (rng.permutation(2 * len(PRIORS) * 4).reshape(2, -1) * 0.15 - 1.5).astype(np.float32)
    return [loc, conf, prior_blob(), GT]


@covers("MultiBoxLoss", "reference")
def test_multibox_loss_matches_the_written_out_rule():
    loc, conf, priors, gt = mbox_inputs()
    layer, _, tops = run_layer(MBOX, [loc, conf, priors, gt])
    loc3, conf3 = loc.reshape(2, -1, 4).astype(np.float64), conf.reshape(2, -1, 4).astype(np.float64)
    expected_loc = expected_conf = 0.0
    matches = 0
    for i in range(2):
        boxes = GT[0, 0][GT[0, 0, :, 0] == i]
        matched, best = match(boxes[:, 3:7].astype(np.float64), PRIORS, True, 0.5)
        positive = np.flatnonzero(matched >= 0)
        matches += positive.size
        target = encode(boxes[matched[positive], 3:7], PRIORS[positive], np.tile(VARIANCE, (positive.size, 1)), 2)
        d = loc3[i, positive] - target
        expected_loc += np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum()
        logp = conf3[i] - np.log(np.exp(conf3[i]).sum(axis=1, keepdims=True))
        expected_conf -= sum(logp[p, int(boxes[matched[p], 1])] for p in positive)
        negatives = [p for p in range(len(PRIORS)) if matched[p] < 0 and best[p] < 0.5]
        hardest = sorted(negatives, key=lambda p: logp[p, 0])[:positive.size]  # largest -log p[background]
        expected_conf -= sum(logp[p, 0] for p in hardest)
    assert matches == layer.matches >= 3        # every ground-truth box gets a prior (bipartite)
    np.testing.assert_allclose(tops[0].data, (expected_loc + expected_conf) / matches, rtol=1e-5)


def test_multibox_matching_is_bipartite_then_per_prediction():
    gt = np.array([[0.0, 0.0, 0.5, 0.5]])
    matched, best = match(gt, PRIORS, per_prediction=False, threshold=0.5)
    assert list(matched) == [0, -1, -1, -1, -1, -1]
    matched, _ = match(gt, PRIORS, per_prediction=True, threshold=0.5)
    assert list(matched) == [0, -1, -1, -1, -1, -1]  # prior 4 overlaps 0.16/0.34 = 0.47 < 0.5
    matched, _ = match(gt, PRIORS, per_prediction=True, threshold=0.45)
    assert list(matched) == [0, -1, -1, -1, 0, -1]
    np.testing.assert_allclose(best[4], 0.16 / 0.34, rtol=1e-6)


@covers("MultiBoxLoss", "gradient")
def test_multibox_loss_gradient():
    check_gradient(MBOX, mbox_inputs(seed=1), check_bottoms=[0, 1], stepsize=1e-3, threshold=2e-3)


def test_multibox_loss_refuses_what_it_does_not_do():
    from dlsoft.errors import NetDefinitionError
    with pytest.raises(NetDefinitionError, match="conf_loss_type"):
        run_layer(MBOX.replace("num_classes: 4", "num_classes: 4 conf_loss_type: LOGISTIC"), mbox_inputs())


# ---- DetectionEvaluate ------------------------------------------------------------------------
@covers("DetectionEvaluate", "reference")
def test_detection_evaluate_and_average_precision():
    detections = np.array([[0, 1, 0.9, 0.05, 0.0, 0.5, 0.55], [0, 1, 0.8, 0.05, 0.0, 0.5, 0.55],
                           [0, 2, 0.7, 0.0, 0.0, 0.2, 0.2], [1, 3, 0.6, 0.2, 0.2, 0.7, 0.7]],
                          dtype=np.float32).reshape(1, 1, 4, 7)
    _, _, tops = run_layer('type: "DetectionEvaluate" detection_evaluate_param { num_classes: 4 }', [detections, GT])
    rows = tops[0].data.reshape(-1, 5)
    np.testing.assert_array_equal(rows[:3], [[-1, 1, 1, -1, -1], [-1, 2, 1, -1, -1], [-1, 3, 1, -1, -1]])
    by_score = {round(float(r[2]), 2): (r[3], r[4]) for r in rows[3:]}
    assert by_score == {0.9: (1, 0), 0.8: (0, 1), 0.7: (0, 1), 0.6: (1, 0)}   # a duplicate is a false positive
    assert average_precision([1, 0], [0, 1], [0.9, 0.8], 1, "11point") == 1.0
    assert average_precision([0, 1], [1, 0], [0.9, 0.8], 1, "Integral") == 0.5
    assert average_precision([0, 1], [1, 0], [0.9, 0.8], 1, "MaxIntegral") == 0.5


DETECTIONS = np.array([[0, 1, 0.9, 0.05, 0.0, 0.5, 0.55], [0, 1, 0.8, 0.05, 0.0, 0.5, 0.55],
                       [0, 2, 0.7, 0.0, 0.0, 0.2, 0.2], [1, 3, 0.6, 0.2, 0.2, 0.7, 0.7]], dtype=np.float32)
EVAL_SOLVER = """
train_net_param { layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
  layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 2 dim: 1 } } }
  layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 1 } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "loss" } }
test_net_param { layer { name: "det" type: "Input" top: "det" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 7 } } }
  layer { name: "gt" type: "Input" top: "gt" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 8 } } }
  layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "detection_eval"
          detection_evaluate_param { num_classes: 4 } } }
test_iter: 2  test_interval: 100  base_lr: 0.01  lr_policy: "fixed"  max_iter: 1
eval_type: "detection"  ap_version: "%s"
"""


@pytest.mark.parametrize("version, expected", [("Integral", 2 / 3), ("11point", 2 / 3)])
def test_solver_eval_type_detection_reports_the_map(tmp_path, version, expected, caplog):
    """SSD's TestDetection: DetectionEvaluate rows gathered over test_iter batches, AP per
    label (label 1: a hit then a duplicate, 2: only a miss, 3: a hit), their mean."""
    import dlsoft  # noqa: PLC0415

    path = tmp_path / "solver.prototxt"
    path.write_text(EVAL_SOLVER % version)
    solver = dlsoft.get_solver(str(path))
    net = solver.test_nets[0]
    net.blobs["det"].data[...] = DETECTIONS.reshape(1, 1, 4, 7)
    net.blobs["gt"].data[...] = GT
    with caplog.at_level("INFO", logger="dlsoft"):
        scores = solver.test(0)
    assert scores["detection_eval"] == pytest.approx(expected)
    assert "Test net output #0: detection_eval = 0.666667" in caplog.text


def test_mobilenet_ssd_solver_test_reports_the_map(annoset, tmp_path):
    """chuanqi305's evaluation as its authors run it: ``train --solver solver_test.prototxt``
    (max_iter 0, test_initialization, eval_type detection, ap_version 11point) over its
    MobileNetSSD_test.prototxt, both unchanged, on a dlsoft-written LMDB: one test pass
    through DetectionOutput and DetectionEvaluate, reported as the mAP."""
    for name in ("MobileNetSSD_train.prototxt", "MobileNetSSD_test.prototxt"):
        shutil.copy(SSD / "voc" / name, tmp_path / name)
    shutil.copy(SSD / "solver_test.prototxt", tmp_path / "solver_test.prototxt")
    shutil.copy(LABEL_MAP, tmp_path / "labelmap.prototxt")
    for lmdb in ("trainval_lmdb", "test_lmdb"):
        shutil.copytree(annoset / "trainval_lmdb", tmp_path / lmdb)
    import os  # noqa: PLC0415

    cwd = os.getcwd()
    os.chdir(tmp_path)  # the nets name their LMDBs and label map relative to where they run
    try:
        result = CliRunner().invoke(cli, ["train", "--solver", "solver_test.prototxt", "--test-iter", "1",
                                          "--batch-size", "1"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    line = [text for text in result.output.splitlines() if "Test net output #0: detection_eval = " in text]
    assert len(line) == 1, result.output
    assert 0.0 <= float(line[0].rsplit("=", 1)[1]) <= 1.0


def test_solver_eval_type_unknown_is_a_one_line_error(tmp_path):
    import dlsoft  # noqa: PLC0415
    from dlsoft.errors import SolverError  # noqa: PLC0415

    path = tmp_path / "solver.prototxt"
    path.write_text((EVAL_SOLVER % "Integral").replace('"detection"', '"detections"'))
    with pytest.raises(SolverError, match=r"eval_type: unknown type 'detections' \(classification or detection\)"):
        dlsoft.get_solver(str(path))


@covers("MultiBoxLoss", "gpu")
@covers("DetectionEvaluate", "gpu")
@pytest.mark.gpu
def test_ssd_layers_gpu_match_cpu():
    from gradcheck import compare_devices
    compare_devices(MBOX, mbox_inputs(seed=2))
    detections = np.array([[0, 1, 0.9, 0.05, 0.0, 0.5, 0.55]], dtype=np.float32).reshape(1, 1, 1, 7)
    compare_devices('type: "DetectionEvaluate" detection_evaluate_param { num_classes: 4 }', [detections, GT])


@covers("AnnotatedData", "gpu")
@pytest.mark.gpu
def test_annotated_data_gpu_matches_cpu(annoset):
    from dlsoft.backend import to_numpy
    # compare_devices runs a second forward on the GPU, which for a data layer is the next batch:
    # compare the first batches of two layers seeded alike instead.
    cpu, _, cpu_tops = run_layer(annotated_layer(annoset), [], num_tops=2, device="cpu")
    gpu, _, gpu_tops = run_layer(annotated_layer(annoset), [], num_tops=2, device="gpu")
    try:
        for c, g in zip(cpu_tops, gpu_tops):
            np.testing.assert_array_equal(to_numpy(g.data), c.data)
    finally:
        cpu.close()
        gpu.close()


# ---- MobileNet-SSD's own train.prototxt -------------------------------------------------------
def train_mobilenet_ssd(annoset, tmp_path, iterations, batch_size):
    shutil.copy(SSD / "train.prototxt", tmp_path / "train.prototxt")           # unchanged
    shutil.copy(LABEL_MAP, tmp_path / "labelmap.prototxt")
    shutil.copytree(annoset / "trainval_lmdb", tmp_path / "trainval_lmdb")
    (tmp_path / "solver.prototxt").write_text(
        'train_net: "train.prototxt" base_lr: 0.002 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.00005 '
        f'type: "SGD" display: 1 max_iter: {iterations} snapshot: 0 snapshot_after_train: false '
        'snapshot_prefix: "mbox" random_seed: 7\n')
    import os

    from dlsoft.solver import Solver
    from dlsoft.solver.config import set_train_batch_size
    cwd = os.getcwd()
    os.chdir(tmp_path)          # the net names its LMDB and label map relative to where it runs, as in Caffe
    try:
        from dlsoft.netdef import io
        solver_param = io.read_solver("solver.prototxt")
        net_param = io.read_net("train.prototxt")
        set_train_batch_size(net_param, batch_size, "train.prototxt")
        solver_param.ClearField("train_net")
        solver_param.train_net_param.CopyFrom(net_param)
        solver = Solver(solver_param, metrics=False, progress_bar=False)
        losses = []
        for _ in range(iterations):
            solver.step(1)
            losses.append(float(solver.net.blobs["mbox_loss"].data))
        solver.net.close()
        return losses
    finally:
        os.chdir(cwd)


@needs_ssd
def test_mobilenet_ssd_train_prototxt_runs(annoset, tmp_path):
    losses = train_mobilenet_ssd(annoset, tmp_path, iterations=2, batch_size=1)
    assert all(np.isfinite(losses)) and losses[0] > 0


@needs_ssd
@pytest.mark.slow
def test_mobilenet_ssd_trains_200_iterations_with_the_loss_falling(annoset, tmp_path):
    losses = train_mobilenet_ssd(annoset, tmp_path, iterations=200, batch_size=2)
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    print(f"MobileNet-SSD mbox_loss: first 20 iterations {first:.3f}, last 20 {last:.3f}")
    assert last < 0.7 * first
