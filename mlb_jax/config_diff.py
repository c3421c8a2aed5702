"""Which fields of two configs differ: what decides whether a stored run may be resumed or reused.

A run's config is stored with its checkpoints and in results.json. Resuming,
evaluating or reusing a run under a config that sets any field that changes
what is computed to another value would mislabel results, so it is refused
with the list of differences (`differences`).
"""

import json
from typing import Iterable

# How runs execute, not what they compute: never compared.
EXECUTION_FIELDS = ('num_seeds', 'compilation_cache_dir', 'profile_steps', 'data.num_workers', 'train.log_every')


def comparable(config) -> dict:
  """`config` (a ConfigDict or dict) as plain JSON types, as results.json and checkpoints store it."""
  data = config.to_dict() if hasattr(config, 'to_dict') else config
  return json.loads(json.dumps(data))


def differences(stored: dict, now: dict, *, ignore: Iterable[str] = ()) -> list[str]:
  """'field: stored vs now' for every field both set to different values.

  A field only one side has is not a difference: fields added to the configs
  later (with defaults that keep the old behaviour) leave stored runs usable.
  `ignore` names further dotted fields (or whole sections, e.g. 'data') not to compare,
  besides `EXECUTION_FIELDS`.
  """
  skip = set(EXECUTION_FIELDS) | set(ignore)
  out = []

  def walk(a, b, prefix):
    for key in sorted(set(a) & set(b)):
      path = prefix + key
      if path in skip:
        continue
      x, y = a[key], b[key]
      if isinstance(x, dict) and isinstance(y, dict):
        walk(x, y, path + '.')
      elif x != y:
        out.append(f'{path}: {x!r} (stored) vs {y!r} (now)')

  walk(comparable(stored), comparable(now), '')
  return out
