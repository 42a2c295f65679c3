"""A config saved as JSON (by launch/sweep.py as <workdir>/requested_config.json), run as is.

  python launch/main.py --config=configs/from_json.py:runs/x/requested_config.json --workdir=runs/x
"""

import json

import ml_collections


def get_config(path):
  if not path:
    raise ValueError("configs/from_json.py needs a path: --config=configs/from_json.py:FILE.json")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
