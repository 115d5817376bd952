"""Custom code of the luna16_detection bundle (MONAI Label requires the package name ``scripts``)."""
