"""Plots a researcher would rather look at than read."""
import collections

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from vit_jax import metrics as metrics_lib  # noqa: E402


def training_curves(metrics_path, png_path):
  """One panel per metric name ('loss', 'accuracy', ...), one line per split ('train', 'eval')."""
  panels = collections.defaultdict(dict)
  for row in metrics_lib.read_jsonl(metrics_path):
    for key, value in row.items():
      if '/' in key:
        split, name = key.split('/', 1)
        panels[name].setdefault(split, []).append((row['step'], value))
  names = sorted(panels)
  fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
  for ax, name in zip(axes[0], names):
    for split, points in sorted(panels[name].items()):
      steps, values = zip(*points)
      ax.plot(steps, values, marker='o' if len(steps) < 20 else None, label=split)
    ax.set_title(name)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
  return png_path



def alignments(examples, png_path):
  """Cross-attention heat maps, one panel per (source chars, output chars, weights [T, S])."""
  fig, axes = plt.subplots(1, len(examples), figsize=(5 * len(examples), 4.5), squeeze=False)
  for ax, (source, output, weights) in zip(axes[0], examples):
    ax.imshow(weights[:len(output) + 1, :len(source)], cmap='viridis', aspect='auto')
    ax.set_xticks(range(len(source)), list(source), fontsize=7)
    ax.set_yticks(range(len(output) + 1), list(output) + ['</s>'], fontsize=7)
    ax.set_xlabel('source')
    ax.set_ylabel('output')
  fig.suptitle('Decoder cross-attention (last layer, mean over heads)')
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
  return png_path
