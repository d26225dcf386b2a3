"""py-faster-rcnn's VGG_CNN_M_1024 end-to-end test net, unchanged from ../shared/caffe-wild,
builds and runs forward with a pycaffe-style proposal layer on sys.path under the name the
file gives (``rpn.proposal_layer``); without that module it fails with one line naming it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import dlsoft
from dlsoft.errors import DlsoftError

ROOT = Path(__file__).resolve().parents[1]
NET = (ROOT.parent / "shared" / "caffe-wild" / "rbgirshick+py-faster-rcnn" / "models" / "pascal_voc" /
       "VGG_CNN_M_1024" / "faster_rcnn_end2end" / "test.prototxt")
LIB = Path(__file__).parent / "data" / "py_faster_rcnn_lib"

pytestmark = pytest.mark.skipif(not NET.is_file(), reason="../shared/caffe-wild is absent")


@pytest.fixture
def without_rpn(monkeypatch):
    for name in [m for m in sys.modules if m == "rpn" or m.startswith("rpn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(Path(__file__).parent)  # the working directory is searched too: keep it free of rpn/


def test_without_the_proposal_module_one_line_names_it(without_rpn):
    with pytest.raises(DlsoftError) as info:
        dlsoft.Net(str(NET), phase="TEST")
    message = str(info.value)
    assert "\n" not in message
    assert "rpn.proposal_layer" in message and "'proposal'" in message and "ProposalLayer" in message


def test_builds_and_runs_forward_with_a_proposal_layer(without_rpn, monkeypatch):
    monkeypatch.syspath_prepend(str(LIB))
    net = dlsoft.Net(str(NET), phase="TEST")
    rng = np.random.default_rng(0)
    for blobs in net.params.values():     # the file's fillers are zeros for some layers: random weights
        for blob in blobs:
            blob.data[...] = rng.normal(0, 0.01, blob.shape)
    image = rng.uniform(-100, 100, (1, 3, 224, 224)).astype(np.float32)
    out = net.forward(data=image, im_info=np.array([[224, 224, 1.0]], np.float32))
    rois = net.blobs["rois"].data
    assert rois.ndim == 2 and rois.shape[1] == 5 and 0 < rois.shape[0] <= 300
    assert (rois[:, 0] == 0).all() and (rois[:, 1:] >= 0).all() and (rois[:, 1:] <= 223).all()
    assert out["cls_prob"].shape == (rois.shape[0], 21)
    np.testing.assert_allclose(out["cls_prob"].sum(axis=1), 1, rtol=1e-5)
    assert out["bbox_pred"].shape == (rois.shape[0], 84)
    assert net.blobs["pool5"].shape == (rois.shape[0], 512, 6, 6)
