"""Small real TFDS datasets under the real builder names, written with TFDS's own writers.

Each image is one flat colour that encodes its example: (index % 256, index // 256, split id),
so a test can tell exactly which examples a pipeline delivered, even after resizing.
"""

import numpy as np
import tensorflow_datasets as tfds

SPLIT_IDS = {"train": 1, "validation": 2, "test": 3}


def decode_index(image) -> int:
  return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


def prepare(name: str, data_dir: str, split_sizes: dict[str, int], make_example) -> None:
  """Writes `make_example(index, split)` for each split into `data_dir`, as builder `name`."""
  tfds.disable_progress_bar()
  real = tfds.builder(name, data_dir=data_dir)

  class Fake(type(real), skip_registration=True):
    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split, n) for split, n in split_sizes.items()}

    def _generate_examples(self, split, n):
      for index in range(n):
        yield f"{split}_{index}", make_example(index, split)

  Fake.name = type(real).name
  config = real.builder_config.name if real.builder_config else None
  Fake(data_dir=data_dir, config=config, version=str(real.version)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def flat_image(index, split, shape):
  image = np.zeros(shape, np.uint8)
  image[..., 0] = index % 256
  if shape[-1] > 1:
    image[..., 1] = index // 256
    image[..., 2] = SPLIT_IDS[split]
  return image


def dtd_example(index, split):
  return {"image": flat_image(index, split, (20, 24, 3)), "label": index % 47,
          "file_name": f"{split}_{index}.jpg"}


def smallnorb_example(index, split):
  """One channel holds only index % 256: the labels are functions of that."""
  image = flat_image(index, split, (96, 96, 1))
  return {"image": image, "image2": image, "label_category": 0, "instance": 0,
          "label_elevation": index % 256 % 9, "label_azimuth": index % 256 % 18,
          "label_lighting": 0}
