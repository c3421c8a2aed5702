"""README.md and docs/: the library snippet runs as printed and trains, the stated defaults are
those of configs/lib/base.py, citations of docs/methods.md name its headings, links resolve."""

import ast
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.lib import base

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def readme_snippet() -> str:
  text = open(README).read()
  match = re.search(r'<!-- library-snippet -->\s*```python\n(.*?)```', text, re.S)
  assert match, 'README.md has no library snippet block'
  return match.group(1)


def test_library_snippet_trains_without_our_trainer():
  namespace = {}
  exec(compile(readme_snippet(), 'README.md', 'exec'), namespace)
  model, tx, train_step = namespace['model'], namespace['tx'], namespace['train_step']
  rng = np.random.default_rng(0)
  y = jnp.asarray(np.arange(32) % 4)
  x = {'audio': jnp.asarray(rng.standard_normal((32, 8)), jnp.float32) + y[:, None],
       'video': jnp.asarray(rng.standard_normal((32, 6)), jnp.float32)}
  params = model.init(jax.random.key(0), x)['params']
  assert set(params) == {'audio', 'video', 'fusion'}
  opt_state = tx.init(params)
  losses = []
  for _ in range(20):
    params, opt_state, loss = train_step(params, opt_state, x, y)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  assert train_step._cache_size() == 1  # k changed every step, one compilation


# ------------------------------------------------------------------------------------------------
# The README's stated defaults, the method-reference anchors and stale citations.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS_DOC = os.path.join(ROOT, 'docs', 'methods.md')
SCANNED_DIRS = ('mlb_jax', 'configs', 'data_pipelines', 'benchmarks', 'tests', 'docs', 'notebooks')
SCANNED_FILES = ('README.md', 'run.py', 'pyproject.toml', 'requirements.txt')
TEXT_SUFFIXES = ('.py', '.md', '.ipynb', '.sh', '.toml', '.txt')
SKIPPED_DIRS = {'__pycache__', '.ipynb_checkpoints', '.pytest_cache'}


def default_rows(text: str):
  """(field, default literal) of the table that follows `<!-- config-defaults -->`."""
  match = re.search(r'<!-- config-defaults -->\s*\n((?:\|.*\n?)+)', text)
  assert match, 'README.md has no config-defaults table'
  lines = [line.strip() for line in match.group(1).strip().splitlines()]
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  assert header[:2] == ['field', 'default'], header
  rows = []
  for line in lines[2:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    field, default = (re.fullmatch(r'`([^`]+)`', c) for c in cells[:2])
    assert field and default, f'a field and a default in backticks, got {line!r}'
    rows.append((field.group(1), default.group(1)))
  return rows


def config_value(config, dotted: str):
  value = config
  for part in dotted.split('.'):
    assert part in value, f'configs/lib/base.py has no field {dotted}'
    value = value[part]
  return value


def normalised(value):
  """Tuples and lists alike, ConfigDicts as dicts, for comparison."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: normalised(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(normalised(v) for v in value)
  return value


REQUIRED_DEFAULTS = {
    'method', 'balancing.score', 'balancing.apply_to', 'balancing.mlb.alpha', 'balancing.mlb.beta_max',
    'balancing.ogm.scale', 'balancing.agm.reencode', 'model.fusion', 'model.kernels', 'loss.fused',
    'loss.unimodal', 'optimizer.name', 'optimizer.learning_rate', 'optimizer.eps', 'optimizer.weight_decay',
    'train.select_head', 'train.ece_bins', 'num_seeds', 'dtype'}


def test_readme_defaults_match_base_config():
  rows = default_rows(open(README).read())
  fields = [field for field, _ in rows]
  assert len(fields) == len(set(fields)), 'a field listed twice'
  missing = REQUIRED_DEFAULTS - set(fields)
  assert not missing, f'the README table leaves out {sorted(missing)}'
  config = base.get_config()
  wrong = {}
  for field, literal in rows:
    stated, actual = normalised(ast.literal_eval(literal)), normalised(config_value(config, field))
    if stated != actual or type(stated) is not type(actual):
      wrong[field] = (literal, actual)
  assert not wrong, f'README defaults that differ from configs/lib/base.py (stated, actual): {wrong}'


def github_anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lowercase, punctuation other than '-' and '_' dropped, spaces -> '-'."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def headings(path: str) -> set[str]:
  text = re.sub(r'```.*?```', '', open(path).read(), flags=re.S)
  anchors, seen = set(), {}
  for title in re.findall(r'^#{1,6}\s+(.+?)\s*#*\s*$', text, re.M):
    anchor = github_anchor(title)
    count = seen.get(anchor, 0)
    seen[anchor] = count + 1
    anchors.add(anchor if count == 0 else f'{anchor}-{count}')
  return anchors


def scanned_files():
  """The project's text files (relative paths)."""
  for name in SCANNED_FILES:
    if os.path.exists(os.path.join(ROOT, name)):
      yield name
  for top in SCANNED_DIRS:
    for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
      dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith('.'))
      for name in sorted(files):
        if name.endswith(TEXT_SUFFIXES):
          yield os.path.relpath(os.path.join(folder, name), ROOT)


def test_method_reference_anchors_resolve():
  """Every citation of a docs/methods.md section (README, docs, code) names one of its headings."""
  anchors = headings(METHODS_DOC)
  broken = []
  for path in scanned_files():
    for anchor in re.findall(r'methods\.md#([\w-]+)', open(os.path.join(ROOT, path), errors='replace').read()):
      if anchor not in anchors:
        broken.append(f'{path}: {anchor}')
  assert not broken, 'anchors that are no heading of docs/methods.md: ' + ', '.join(broken)


def test_markdown_links_resolve():
  """Relative links of README.md and docs/*.md name existing files (and, into methods.md, headings)."""
  docs = os.path.join(ROOT, 'docs')
  pages = ['README.md'] + [os.path.join('docs', n) for n in sorted(os.listdir(docs)) if n.endswith('.md')]
  anchors = headings(METHODS_DOC)
  broken = []
  for page in pages:
    text = re.sub(r'```.*?```', '', open(os.path.join(ROOT, page)).read(), flags=re.S)
    text = re.sub(r'`[^`\n]*`', '', text)
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
      if re.match(r'[a-z]+://', target) or target.startswith('mailto:'):
        continue
      path, _, anchor = target.partition('#')
      resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
      if not os.path.exists(resolved):
        broken.append(f'{page}: {target}')
      elif anchor and os.path.samefile(resolved, METHODS_DOC) and anchor not in anchors:
        broken.append(f'{page}: {target}')
      elif anchor and resolved.endswith('.md') and anchor not in headings(resolved):
        broken.append(f'{page}: {target}')
  assert not broken, 'links to missing files or headings: ' + ', '.join(broken)


# Built by concatenation so that this file does not contain them.
STALE = ('METHODS' + '.md §', '..' + '/shared')


def test_no_stale_citations():
  found = []
  for path in scanned_files():
    text = open(os.path.join(ROOT, path), errors='replace').read()
    found += [f'{path}: {s!r}' for s in STALE if s in text]
  assert not found, 'cite docs/methods.md#<anchor> instead: ' + ', '.join(found)
