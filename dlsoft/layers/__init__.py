"""Layers, one module per family, registered by Caffe type name (see ``base.Layer``)."""
from .base import TEST, TRAIN, Layer
from .registry import create_layer, layer_class, register, registered_types

__all__ = ["Layer", "TRAIN", "TEST", "register", "layer_class", "registered_types", "create_layer"]
