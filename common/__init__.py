"""What every bundle shares, and nothing that knows one dataset's files or labels.

- ``metrics``, ``handlers``: per-region Dice, IoU and Hausdorff distance on MONAI's metric classes, with the
  empty-mask rule named (``"brats"``: the BraTS challenges' rule, used by name; ``"nan"``: excluded);
- ``amp``: mixed precision and memory format chosen from the device (CUDA fp16, CPU bf16 where it is correct);
- ``checkpoint``: the one checkpoint layout, atomic saves, ``weights_only`` loading, resume;
- ``ensemble``, ``folds``: fold ensembles with mirroring test-time augmentation, and the seeded fold rule;
- ``data``: training datasets that decode each item once, in memory or in a disk cache (``cache_dir``);
- ``openvino``: a network's forward pass run by OpenVINO's CPU runtime (an opt-in engine, measured in the speed
  benchmarks);
- ``distributed``, ``progress``, ``tracking``, ``errors``, ``files``, ``flags``: how a run starts, reports, ends
  and writes its files (atomic, the user's umask) for every bundle alike.
"""

__version__ = "0.1.0"
