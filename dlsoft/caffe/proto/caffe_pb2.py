"""``caffe.proto.caffe_pb2`` is dlsoft's schema module itself (one set of message classes)."""
import sys

from ...protos import caffe_pb2 as _caffe_pb2

sys.modules[__name__] = _caffe_pb2
