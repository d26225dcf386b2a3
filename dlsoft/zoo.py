"""``import dlsoft.zoo``: the model zoo (:mod:`dlsoft.model_zoo`) under the name the README uses.

``dlsoft.zoo`` is the very module ``dlsoft.model_zoo``: ``dlsoft.zoo.load("lenet_mnist")``.
"""
import sys

from . import model_zoo as _model_zoo

sys.modules[__name__] = _model_zoo
