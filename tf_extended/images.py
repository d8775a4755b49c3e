"""How images enter the nets (DESIGN.md §5): RGB float minus the ImageNet means.

The one home of the means: the preprocessing subtracts them, the MobileNetV2 nets add them back
(to rescale to [-1, 1]), and the trainer's image summaries add them back for display.
"""
from __future__ import annotations

# Caffe SSD's mean_value [104, 117, 123] (BGR) -> RGB; the original project used the same.
RGB_MEANS = (123.0, 117.0, 104.0)
