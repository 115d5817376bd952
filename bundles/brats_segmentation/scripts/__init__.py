"""Custom code of the brats_segmentation bundle (MONAI Label requires the package name ``scripts``).

Modules: ``prepare`` (BraTS root -> datalist, seeded split), ``brats`` (editions, loading, label <-> region
transforms), ``lesion_wise`` (BraTS 2023 lesion-wise scoring), ``writers`` (segmentations and overlays in the
input's space), ``studies`` (4-channel studies for MONAI Label), ``synthetic`` (generator in the real layout),
``ensemble`` (fold ensembles and mirroring test-time augmentation as one inferer).
"""
