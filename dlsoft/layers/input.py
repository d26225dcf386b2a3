"""Input: declares the net's input blobs and their shapes (filled by the user)."""
from __future__ import annotations

from .base import Layer
from .registry import register


@register
class InputLayer(Layer):
    """Tops shaped by ``input_param.shape`` (one shape for all tops, or one per top).

    The layer computes nothing: users (or the solver's caller) write the top blobs.
    """

    type = "Input"
    exact_num_bottoms = 0
    min_tops = 1
    forward_only = True

    def setup(self, bottoms, tops):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(tops)):
            raise self.error(f"input_param has {len(shapes)} shapes for {len(tops)} tops "
                             "(give one shape, or one per top)")
        for i, top in enumerate(tops):
            if shapes:
                index = 0 if len(shapes) == 1 else i
                dims = tuple(shapes[index].dim)
                if any(d < 0 for d in dims):
                    raise self.error(f"input_param.shape[{index}].dim {list(dims)} has a negative dimension "
                                     "(Input takes sizes >= 0; -1 is for Reshape)")
                top.reshape(dims)

    def reshape(self, bottoms, tops):
        """Input tops keep whatever shape the user gave them."""

    def forward_cpu(self, bottoms, tops):
        """Nothing to compute: the data is already in the tops."""
