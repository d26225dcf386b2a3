"""``caffe.proto``: the schema module, as ``from caffe.proto import caffe_pb2`` expects."""
from ...protos import caffe_pb2

__all__ = ["caffe_pb2"]
