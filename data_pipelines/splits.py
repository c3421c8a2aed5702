"""Train/val/test assignments: published lists, deterministic hold-outs and group k-folds.

Every function is a pure function of its inputs and a seed; the same
arguments always give the same split. Bad list files raise ValueError naming
the file (and line).
"""

import json
import os
import re
from typing import Callable, Sequence

import numpy as np

SPLITS = ('train', 'val', 'test')


def _read_lines(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such split file')
  with open(path) as f:
    return [line.rstrip('\r\n') for line in f]


def read_labelled_list(path: str) -> list[tuple[str, str]]:
  """`<clip id>,<LABEL>` per line (CREMA-D clips.csv / OGM train.csv, test.csv).

  Returns:
    [(clip id, label)] in file order; blank lines are ignored.
  """
  out = []
  for n, line in enumerate(_read_lines(path), 1):
    if not line.strip():
      continue
    parts = line.split(',')
    if len(parts) != 2 or not parts[0] or not parts[1]:
      raise ValueError(f"{path}:{n}: expected '<clip id>,<LABEL>', got '{line}'")
    out.append((parts[0].strip(), parts[1].strip()))
  return out


def clip_id_of(entry: str) -> str:
  """'1026_IEO_ANG_HI.wav-3' -> '1026_IEO_ANG_HI': the reference's pickle suffixes ('-N') and
  the extension are not part of the id."""
  return re.sub(r'(\.wav)?(-\d+)?$', '', entry.strip())


def read_split_json(path: str, fold: int | None = None) -> dict[str, list[str]]:
  """A user split file: {"train": [...], "val": [...], "test": [...]} or folds of those
  keyed "1".."K" (the VAVL layout, docs/methods.md#crema-d), entries `<id>` or `<id>.wav[-N]`.

  Args:
    path: the JSON file.
    fold: which fold for a folded file (its key is str(fold)); ignored otherwise.

  Returns:
    {'train', 'val', 'test'} -> clip ids in file order.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such split file')
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(data, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(data).__name__}')
  if not set(SPLITS) <= set(data):
    if str(fold) not in data:
      raise ValueError(f'{path}: has neither {list(SPLITS)} nor fold key "{fold}"; keys: {sorted(data)[:10]}')
    data = data[str(fold)]
    where = f'{path} fold "{fold}"'
  else:
    where = path
  out = {}
  for split in SPLITS:
    entries = data.get(split) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
      raise ValueError(f"{where}: '{split}' must be a list of clip names")
    out[split] = [clip_id_of(e) for e in entries]
  overlap = {a + '/' + b: len(set(out[a]) & set(out[b])) for a, b in (('train', 'val'), ('train', 'test'), ('val', 'test'))}
  overlap = {k: v for k, v in overlap.items() if v}
  if overlap:
    raise ValueError(f'{where}: clips appear in two splits: {overlap}')
  return out


def holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """Splits `ids` into (kept, held out): round(fraction * N) ids drawn without
  replacement by `numpy.random.default_rng(seed)` from the sorted ids; both parts
  keep the input order."""
  if not 0 <= fraction < 1:
    raise ValueError(f'hold-out fraction must be in [0, 1), got {fraction}')
  order = sorted(ids)
  chosen = set(np.random.default_rng(seed).permutation(len(order))[:round(fraction * len(order))].tolist())
  held = {order[i] for i in chosen}
  return [i for i in ids if i not in held], [i for i in ids if i in held]


def group_kfold(ids: Sequence[str], group_of: Callable[[str], str], num_folds: int, fold: int,
                seed: int) -> dict[str, list[str]]:
  """Group-disjoint folds (e.g. CREMA-D actors): test = fold `fold`, val = the next fold.

  The sorted distinct groups are permuted by `default_rng(seed)` and cut into
  `num_folds` near-equal parts (numpy.array_split); fold k (1-based) is part k-1.
  Test takes part `fold`, validation part `fold % num_folds + 1`, training the
  rest, so no group is in two splits and every group is tested in exactly one fold.
  """
  if num_folds < 3:
    raise ValueError(f'group k-fold needs num_folds >= 3 (train, val and test parts), got {num_folds}')
  if not 1 <= fold <= num_folds:
    raise ValueError(f'fold must be in 1..{num_folds}, got {fold}')
  groups = sorted({group_of(i) for i in ids})
  if len(groups) < num_folds:
    raise ValueError(f'{len(groups)} groups cannot fill {num_folds} folds')
  perm = np.random.default_rng(seed).permutation(len(groups))
  parts = [{groups[j] for j in part} for part in np.array_split(perm, num_folds)]
  test, val = parts[fold - 1], parts[fold % num_folds]
  out = {'train': [], 'val': [], 'test': []}
  for i in ids:
    g = group_of(i)
    out['test' if g in test else 'val' if g in val else 'train'].append(i)
  return out


def stratified_group_holdout(ids: Sequence[str], group_of: Callable[[str], str],
                             class_of: Callable[[str], str], fraction: float,
                             seed: int) -> tuple[list[str], list[str]]:
  """Holds out about `fraction` of each class's groups (at least one when the class
  has two or more), so a group (e.g. a UCF101 `<Class>_gXX` recording session)
  never straddles the two parts. Groups are matched exactly.

  Returns:
    (kept, held out), each in input order.
  """
  if not 0 <= fraction < 1:
    raise ValueError(f'hold-out fraction must be in [0, 1), got {fraction}')
  by_class: dict[str, set[str]] = {}
  for i in ids:
    by_class.setdefault(class_of(i), set()).add(group_of(i))
  rng = np.random.default_rng(seed)
  held = set()
  for cls in sorted(by_class):
    groups = sorted(by_class[cls])
    n = max(1, round(fraction * len(groups))) if len(groups) > 1 and fraction > 0 else 0
    held.update(groups[j] for j in rng.permutation(len(groups))[:n])
  return [i for i in ids if group_of(i) not in held], [i for i in ids if group_of(i) in held]
