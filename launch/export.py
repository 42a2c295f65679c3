"""Write a finished run as files other tools load, with a model card (model_card.json).

  python launch/export.py --run=runs/demo/demo_digits/full --out=exports/digits_full

Methods whose update folds into the backbone's weights (full, partial_k, bitfit, layernorm, lora,
ssf, fact_tt/tk, repadapter, difffit, linear, ...) are merged into a plain ViT: model.safetensors
for timm (the card's "timm" entry: timm.create_model(model, pretrained=False, **kwargs), then
load_state_dict(strict=True)) and model.npz, a vpt_jax backbone. Methods that add tokens or
modules (VPT, adapters, AdaptFormer, ConvPass, VQT, side networks, ...) are not mergeable: their
parameters and head go to parameters.safetensors, with the backbone named in the card.
--merged refuses a run that does not merge; --nomerged writes parameters for any run.
docs/predict_export.md has the details.
"""

from absl import flags, logging

from vpt_jax.inference import export, merge
from vpt_jax.inference import run as run_lib
from vpt_jax.utils import cli

_RUN = flags.DEFINE_string("run", None, "The folder of one finished run (launch/main.py's run folder).")
_OUT = flags.DEFINE_string("out", None, "The folder to write the export into (made if missing).")
_MERGED = flags.DEFINE_bool("merged", None, "Merge, or refuse when the method does not merge "
                            "(default: merge what merges); --nomerged: parameters only.")
flags.mark_flags_as_required(["run", "out"])


def main(argv):
  logging.set_verbosity(logging.WARNING)  # No JAX start-up lines among the results.
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments {' '.join(argv[1:])}; use --run=... --out=...")
  with cli.errors(run_lib.RunError, merge.NotMergeableError):
    run = run_lib.open_run(_RUN.value)
    card = export.export(run, _OUT.value, _MERGED.value)
  if card["merged"]:
    print(f"{card['method']}: merged into a plain ViT (timm {card['timm']['model']}); "
          f"load it with timm.create_model as model_card.json's timm entry says.")
  elif card["mergeable"]:
    print(f"{card['method']}: parameters only (--nomerged); it would merge into a plain ViT.")
  else:
    print(f"{card['method']} is not mergeable ({card['not_mergeable_because']}): wrote its trained "
          f"parameters and head, to use on the backbone {card['backbone']['name']}.")
  for record in card["files"]:
    print(f"  {_OUT.value}/{record['name']}  {record['bytes']:,} bytes  sha256 {record['sha256'][:16]}…")
  print(f"  {_OUT.value}/{export.CARD}")


if __name__ == "__main__":
  cli.run(main)
