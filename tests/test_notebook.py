"""notebooks/quickstart.ipynb executes headless, top to bottom, without error.

The kernel gets this checkout on PYTHONPATH, so the notebook's install cell finds `mlb_jax`
importable and installs nothing: the test needs no network and no `pip install -e .` (CI installs
requirements.txt only), and it runs the checkout's code even where another copy is installed.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'quickstart.ipynb')


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  import nbformat
  from nbclient import NotebookClient

  monkeypatch.setenv('QUICKSTART_STEPS', '20')            # short runs: this checks the notebook, not MLB
  monkeypatch.setenv('QUICKSTART_OUT', str(tmp_path / 'quickstart'))
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '0')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name='python3',
                 resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  first = ''.join(o.get('text', '') for o in nb.cells[1].outputs if o.output_type == 'stream')
  assert f"from {os.path.join(ROOT, 'mlb_jax')}" in first, first  # the checkout, not an installed copy
  images = [o for o in outputs if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(images) == 6  # comparison, ECE, agreement, balancing, accuracy of joint and of mlb
  assert os.path.isfile(tmp_path / 'quickstart' / 'report.md')
