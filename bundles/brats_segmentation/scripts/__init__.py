"""Custom code of the brats_segmentation bundle (MONAI Label requires the package name ``scripts``).

Modules: ``brats`` (edition conventions, loading/label transforms), ``prepare`` (BraTS root -> datalist),
``synthetic`` (generator in the real layout), ``writers`` (segmentation/overlay output), ``training``
(resume handler), ``demo`` (end-to-end CPU demo).
"""
