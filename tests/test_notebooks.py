"""Every notebook runs top to bottom on the quick setting (as CI does), and no cell fails."""
import os

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, 'notebooks')) if f.endswith('.ipynb'))


def test_there_is_a_notebook_per_family():
  assert NOTEBOOKS == ['detr.ipynb', 'transformer.ipynb', 'vit.ipynb']


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv('VIT_JAX_QUICK', '1')
  monkeypatch.setenv('XLA_FLAGS', '')  # One CPU device: the tests' 8 simulated ones cost time.
  monkeypatch.setenv('VIT_JAX_WORKDIR', str(tmp_path))
  notebook = nbformat.read(os.path.join(ROOT, 'notebooks', name), as_version=4)
  first = ''.join(notebook.cells[0].source)
  assert 'colab.research.google.com/github/' in first and f'notebooks/{name}' in first
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}}
                          ).execute()  # Raises CellExecutionError naming the failing cell.
  images = [o for cell in notebook.cells if cell.cell_type == 'code'
            for o in cell.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert images, 'the notebook showed no pictures'
