"""Custom code of the cxr14_classification bundle (MONAI Label requires the package name ``scripts``).

Modules: ``prepare`` (NIH layout -> datalist, patient-level split), ``labels`` (the 14 labels, class weights),
``io`` (PNG and DICOM decoding), ``networks`` (DenseNet-121 and the small demo network, pretrained weights),
``metrics`` (validation AUROC handler), ``evaluation`` (test report: AUROC, thresholds, ROC curves),
``outputs`` (probability CSV, Grad-CAM), ``localisation`` (Grad-CAM against the reference boxes of
``BBox_List_2017.csv``, with baselines), ``synthetic`` (generator in the real layout).
"""
