"""Dense tasks on a pretrained image backbone: semantic segmentation and object detection.

``nets`` builds the networks (and is all a saved bundle needs); ``training`` is their training loop; the
estimators are :class:`headstart.Segmenter` and :class:`headstart.Detector`.
"""

from headstart.dense.nets import DENSE_TASKS, build_dense_net

__all__ = ["DENSE_TASKS", "build_dense_net"]
