"""A checkpoint that cannot be what the model is says why in one line: a path that does not exist,
a Swin file given to a ViT model."""

import pytest
import torch

from vpt_jax import checkpoints
from vpt_jax.checkpoints import pretrained
from vpt_jax.models import vit


def test_a_missing_path_says_so_first_in_one_short_line(tmp_path):
  missing = str(tmp_path / "no_such" / "backbone.pth")
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(missing, vit.Model(num_classes=0, variant="mu/4", depth=1))
  assert str(error.value) == f"Checkpoint file {missing} does not exist."


def test_a_swin_file_given_to_a_vit_model_says_it_is_swin(tmp_path):
  state = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}
  for stage, depth in enumerate((2, 1)):
    for block in range(depth):
      state[f"layers.{stage}.blocks.{block}.attn.relative_position_bias_table"] = torch.zeros(169, 2)
  path = tmp_path / "swin.pth"
  torch.save({"model": state}, path)
  with pytest.raises(pretrained.CheckpointError, match=r"is a Swin checkpoint \(embed width 8, stage depths "
                     r"2-1\), not a ViT: use a Swin model variant"):
    checkpoints.load(str(path), vit.Model(num_classes=0, variant="mu/4", depth=1))
