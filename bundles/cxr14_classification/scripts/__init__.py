"""Custom code of the cxr14_classification bundle (MONAI Label requires the package name ``scripts``).

Importing the package also imports the shared ``common`` submodules, because a bundle config's
``"$import common.amp"`` binds no usable name (MONAI stores it under the dotted string), so configs use
``"$import common"`` + ``"$import scripts"`` and reach ``common.amp`` through this import.
"""

import common.amp  # noqa: F401
import common.checkpoint  # noqa: F401

from . import evaluation, io, labels, metrics, networks, outputs, prepare, training  # noqa: F401
