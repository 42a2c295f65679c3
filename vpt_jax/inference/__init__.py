"""Using a finished run outside training: open and check it (run.py), classify image files with
it (predict.py), and write it as files other tools load (export.py, with merge.py folding a
method's update into plain ViT weights and timm_vit.py naming them as timm does)."""
