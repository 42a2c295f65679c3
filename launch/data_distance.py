"""Fréchet distance between each task's training images and a reference image set.

  python launch/data_distance.py --tasks=all --reference_dir=/data/imagenet_sample \
      --out=sweeps/a/distances.json
  python launch/data_distance.py --tasks=dtd,svhn --reference_task=cifar100 --extractor=inception \
      --inception_weights=inception_v3_notop.h5 --out=distances.json

The paper measures each task against the pre-training images (ImageNet); --reference_dir takes a
folder of JPEG/PNG files such as a sample of them. Features: the pre-trained ViT's pre-logits
(--backbone, default ViT-B_16) or Inception-v3.
"""

import os
import sys

from absl import flags, logging
import numpy as np
import tensorflow as tf

from vpt_jax.checkpoints import pretrained
from vpt_jax.study import distance
from vpt_jax.utils import cli, files
from vpt_jax.data import pipeline
from vpt_jax.data import tasks as tasks_lib

_TASKS = flags.DEFINE_string("tasks", "all", "'all', a group, or task names joined by , or +.")
_SUBSET = flags.DEFINE_string("subset", "train800val200", "Which images of each task.")
_REFERENCE_DIR = flags.DEFINE_string("reference_dir", None, "Folder of reference images.")
_REFERENCE_TASK = flags.DEFINE_string("reference_task", None, "Or a task's images as reference.")
_EXTRACTOR = flags.DEFINE_enum("extractor", "vit", ["vit", "inception"], "Feature network.")
_BACKBONE = flags.DEFINE_string("backbone", "ViT-B_16", "For --extractor=vit.")
_VARIANT = flags.DEFINE_string("variant", "B/16", "For --extractor=vit.")
_DEPTH = flags.DEFINE_integer("depth", None, "For --extractor=vit, a shallower model.")
_RESOLUTION = flags.DEFINE_integer("resolution", 224, "Image size.")
_INCEPTION = flags.DEFINE_string("inception_weights", None, "For --extractor=inception.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_OUT = flags.DEFINE_string("out", "distances.json", "Output JSON.")


def _folder_images(folder, resolution):
  files = sorted(f for f in os.listdir(folder)
                 if f.lower().endswith((".jpg", ".jpeg", ".png")))
  if len(files) < 2:
    raise ValueError(f"{folder} holds {len(files)} JPEG/PNG images; at least 2 are needed.")
  images = []
  for name in files:
    image = tf.io.decode_image(tf.io.read_file(os.path.join(folder, name)), channels=3,
                               expand_animations=False)
    image = tf.image.resize(image, (resolution, resolution), method="bilinear")
    images.append(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy())
  return np.stack(images)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    if bool(_REFERENCE_DIR.value) == bool(_REFERENCE_TASK.value):
      raise ValueError("Give exactly one of --reference_dir and --reference_task.")
    if _EXTRACTOR.value == "vit":
      extractor = distance.vit_extractor(_BACKBONE.value, _VARIANT.value, _RESOLUTION.value,
                                         "imagenet", depth=_DEPTH.value)
    else:
      extractor = distance.inception_extractor(_INCEPTION.value or "")
    if _REFERENCE_DIR.value:
      reference = _folder_images(_REFERENCE_DIR.value, _RESOLUTION.value)
    else:
      reference, _ = pipeline.load_arrays(tasks_lib.get(_REFERENCE_TASK.value), _SUBSET.value,
                                          _RESOLUTION.value, _DATA_DIR.value)
    reference_features = extractor(reference)
    results = {}
    for task in tasks_lib.expand(_TASKS.value):
      images, _ = pipeline.load_arrays(tasks_lib.get(task), _SUBSET.value, _RESOLUTION.value, _DATA_DIR.value)
      value = distance.features_distance(extractor(images), reference_features)
      results[task] = {"distance": value, "images": len(images), "reference_images": len(reference),
                       "extractor": _EXTRACTOR.value}
      print(f"{task:24s} {value:10.3f}")
  except (ValueError, FileNotFoundError, pretrained.CheckpointError,
          pipeline.DataNotPreparedError) as e:
    sys.exit(f"error: {e}")
  files.write_json(_OUT.value, results)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
