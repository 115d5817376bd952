"""Custom code of the luna16_detection bundle (MONAI Label requires the package name ``scripts``).

Modules: ``prepare`` (LUNA16 layout -> datalist by official subsets, MetaImage headers, world coordinates),
``boxes`` (world mm <-> voxel boxes), ``engines`` (RetinaNet trainer, evaluator, inferer), ``froc`` (LUNA16
FROC/CPM), ``handlers`` (FROC metric, detection writer), ``networks`` (RetinaNet's anchor logits as one tensor),
``synthetic`` (generator in the real layout), ``ensemble`` (fold ensembles and mirroring TTA, fused by weighted box
fusion or NMS).
"""
