"""One call on a lent GPU (one H100 or H200, < 8 minutes): versions, a correctness gate, then
speed rows saved one by one, then a Markdown summary. TF-free and ml_collections-free.

  # Once, on a CPU machine with the project installed (ml_collections for the GPU image, the demo
  # task's data and array caches for the mini sweep):
  python launch/device_check.py --prepare=build/device
  # On the GPU (carry build/device):
  PYTHONPATH=. python launch/device_check.py --prepared=build/device --out=$OUT/check
  # Rebuild the summary from the rows of a run that was cut short:
  python launch/device_check.py --summarize=$OUT/check
  # The same code paths on a CPU with a tiny model (tests/test_device_check.py runs this):
  python launch/device_check.py --dry_run --out=/tmp/check

Steps, in order, each in its own process under its own time limit (vpt_jax/bench/device_check.py
PLAN), skipped with the reason recorded when the budget runs short: versions (jax, jaxlib, flax,
optax, torch, timm, CUDA, cuDNN, device); gate (fused == explicit attention at 197/247/397 tokens
and under vmap, loss falls for full and vpt_deep in bf16, packed == alone, bf16 close to float32);
matmul_peak; jax_b128 and jax_b64 (full and VPT-deep, the paper recipe's step); torch_eager;
vpt200 (200 prompts); pack (K=4 VPT-deep runs in one step); torch_compile (static batch);
mini_sweep (launch/sweep.py, 5 demo runs). Rows: <out>/rows.jsonl; summary: <out>/summary.md;
each step's output: <out>/<step>.log. cuDNN older than 9.15.1 gets XLA_FLAGS that keep its calls
out of CUDA graphs (see vpt_jax/models/vit.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vpt_jax.bench import device_check  # noqa: E402  (after the repository is importable)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="device_check", help="Where rows, logs and summary go.")
  parser.add_argument("--budget", type=float, default=450.0, help="Seconds for all steps.")
  parser.add_argument("--dry_run", action="store_true", help="A tiny model on the CPU.")
  parser.add_argument("--only", default="", help="Comma-separated steps (default: all).")
  parser.add_argument("--prepared", default=None, help="The directory --prepare filled.")
  parser.add_argument("--prepare", default=None, metavar="DIR",
                      help="On a CPU machine: fill DIR for the GPU run, then exit.")
  parser.add_argument("--summarize", default=None, metavar="DIR",
                      help="Rebuild DIR/summary.md from DIR/rows.jsonl, then exit.")
  parser.add_argument("--step", default=None, help=argparse.SUPPRESS)  # A child's one step.
  args = parser.parse_args(argv)
  if args.step:
    from vpt_jax.bench import device_steps  # Starts JAX: only ever in a step's own process.
    device_steps.run(args.step, args.out, args.dry_run)
    return 0
  if args.summarize:
    if not os.path.exists(os.path.join(args.summarize, device_check.ROWS)):
      sys.exit(f"error: {args.summarize} holds no {device_check.ROWS}.")
    print(device_check.summarize(args.summarize))
    return 0
  if args.prepare:
    copied = device_check.prepare(args.prepare)
    print(f"Prepared {args.prepare}: carried packages {', '.join(copied)} in site/, the demo's "
          "data in tfds/ and cache/. Carry it to the GPU and pass --prepared.")
    return 0
  unknown = set(filter(None, args.only.split(","))) - {s.name for s in device_check.PLAN}
  if unknown:
    sys.exit(f"error: --only names unknown steps {sorted(unknown)}; the steps: "
             f"{', '.join(s.name for s in device_check.PLAN)}.")
  if args.prepared and not os.path.isdir(args.prepared):
    sys.exit(f"error: --prepared={args.prepared} is not a directory (make it with --prepare).")
  return device_check.run(args)


if __name__ == "__main__":
  sys.exit(main())
