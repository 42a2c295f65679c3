"""One FGVC run (CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars) as the VPT
code trains it, on a dataset folder in KMnP/vpt's layout (train.json, val.json, test.json and the
images; README "Datasets preperation" links its split files):

  python launch/main.py --config=configs/fgvc.py:task=cub --config.data.data_dir=/data/CUB_200_2011
  python launch/main.py --config=configs/fgvc.py:task=stanford_cars,method=full,phase=search \
      --config.data.data_dir=/data/fgvc   # a folder holding cub/, nabirds/, ... (task names)
  python launch/sweep.py --config=configs/fgvc.py:task=fgvc,method=vpt_deep --sweep_dir=sweeps/f

Arguments as configs/vtab.py's (task: one of cub, nabirds, oxford_flowers, stanford_dogs,
stanford_cars, or fgvc for all five). The `paper` recipe gives KMnP/vpt's FGVC settings
(vpt_jax/training/recipes.py, docs/protocol.md): images resized to 256 and held so, a random
224 crop and flip per example and epoch in training, the centre 224 crop in evaluation; phase
final trains on train.json and scores test.json, search scores val.json.

Expected test top-1 with VPT-deep (VPT paper, Table 1 / appendix; vpt_jax/study/published.py):
CUB 88.5, NABirds 84.2, Oxford Flowers 99.0, Stanford Dogs 90.2, Stanford Cars 83.6; with full
fine-tuning 87.3, 82.7, 98.8, 89.4, 84.5.
"""

from configs import vtab


def get_config(arg=None):
  return vtab.get_config(arg or "task=cub")
