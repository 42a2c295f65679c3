"""What the study can combine: every task, data source, backbone, method and recipe, one line each
(`python launch/main.py --list`). Each list is its axis's registry, read as it is."""

from vpt_jax import methods
from vpt_jax.data import sources
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import backbones
from vpt_jax.training import recipes


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
  width = max(len(name) for name, _ in rows) + 2
  return [title] + [f"  {name:<{width}}{about}" for name, about in rows] + [""]


def _first_sentence(text: str) -> str:
  """A docstring's first sentence, however many lines it spans."""
  flat = " ".join((text or "").split())
  end = flat.find(". ")
  return flat if end < 0 else flat[:end + 1]


DEMO_BACKBONE = ("demo (shipped)", "the offline demo's ViT-Ti/8 of depth 2, pre-trained on rendered shapes "
                 "(vpt_jax/assets/demo_vit_ti8_depth2.npz; configs/demo.py sets it); Ti/8, vit_npz")


def lines() -> list[str]:
  tasks = [(t.name, f"{t.group}, {t.num_classes} classes, {t.builder}")
           for t in tasks_lib.TASKS.values()]
  return (
      _section("Tasks (task=NAME; also all, demo, natural, specialized, structured, a+b; "
               "task=folder:<path> for your own images):", tasks)
      + _section("Data sources (--config.data.source=NAME):",
                 [(s.name, s.about) for s in sources.SOURCES.values()])
      + _section("Backbones (backbone=NAME in configs/vtab.py, --config.backbone=NAME, or a file):",
                 [DEMO_BACKBONE] + [(b.name, f"{b.about}; {b.variant}, {b.checkpoint_format}")
                                    for b in backbones.BACKBONES.values()])
      + _section("Methods (method=NAME; several joined by +):",
                 [(name, methods.about(name)) for name in methods.names()])
      + _section("Recipes (recipe=NAME):",
                 [(name, _first_sentence(fn.__doc__)) for name, fn in recipes.RECIPES.items()]))
