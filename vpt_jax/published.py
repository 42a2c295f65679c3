"""Published VTAB-1k top-1 test accuracies (%) of ViT-B/16 ImageNet-21k (docs/protocol.md)."""

TASK_ORDER = ("cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn",
              "sun397", "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy",
              "clevr_count", "clevr_dist", "dmlab", "kitti_dist", "dsprites_loc", "dsprites_ori",
              "smallnorb_azi", "smallnorb_ele")

_VPT_PAPER_TABLE1 = {
    "full": "68.9 87.7 64.3 97.2 86.9 87.4 38.8 79.7 95.7 84.2 73.9 56.3 58.6 41.7 65.5 57.5 46.7 25.7 29.1",
    "linear": "63.4 85.0 63.2 97.0 86.3 36.6 51.0 78.5 87.5 68.6 74.0 34.3 30.6 33.2 55.4 12.5 20.0 9.6 19.2",
    "vpt_shallow": "77.7 86.9 62.6 97.5 87.3 74.5 51.2 78.2 92.0 75.6 72.9 50.5 58.6 40.5 67.1 68.7 36.1 20.2 34.1",
    "vpt_deep": "78.8 90.8 65.8 98.0 88.3 78.1 49.6 81.8 96.1 83.4 68.4 68.5 60.0 46.5 72.8 73.6 47.9 32.9 37.8",
}

# method -> task -> accuracy, from the VPT paper's Table 1.
VPT_PAPER = {method: dict(zip(TASK_ORDER, map(float, row.split())))
             for method, row in _VPT_PAPER_TABLE1.items()}
