"""Plots a researcher would rather look at than read."""
import collections

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from vit_jax import metrics as metrics_lib  # noqa: E402


def _save(fig, png_path, title=None, fit=True):
  """Saves and closes `fig`; `fit` lays it out with tight_layout first."""
  if title:
    fig.suptitle(title)
  if fit:
    fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
  return png_path


def training_curves(metrics_path, png_path, columns=4):
  """One panel per metric name ('loss', 'accuracy', ...), `columns` to a row, one line per
  split ('train', 'eval'), each split one colour in every panel and named once, in a legend
  above them.

  The margins are fixed rather than fitted (tight_layout draws the figure twice to measure
  it): 18 panels, as many as a detector logs, took 1.5 s to save fitted and 0.8-1.0 s fixed
  (a throw-away script; Intel Xeon, family 6 model 167).
  """
  panels = collections.defaultdict(dict)
  for row in metrics_lib.read_jsonl(metrics_path):
    for key, value in row.items():
      if '/' in key:
        split, name = key.split('/', 1)
        panels[name].setdefault(split, []).append((row['step'], value))
  names = sorted(panels)
  splits = sorted({split for name in names for split in panels[name]})
  colours = {split: f'C{i}' for i, split in enumerate(splits)}
  cols = max(1, min(columns, len(names)))
  rows = max(1, -(-len(names) // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.5), squeeze=False)
  for ax, name in zip(axes.flat, names):
    for split, points in sorted(panels[name].items()):
      steps, values = zip(*points)
      ax.plot(steps, values, marker='o' if len(steps) < 20 else None, markersize=3,
              color=colours[split])
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(names):]:
    ax.axis('off')
  for ax in axes.flat[max(0, len(names) - cols):len(names)]:  # The lowest of each column.
    ax.set_xlabel('step', fontsize=8)
  inch = lambda x: x / fig.get_figheight()
  fig.subplots_adjust(left=0.7 / fig.get_figwidth(), right=1 - 0.2 / fig.get_figwidth(),
                      bottom=inch(0.5), top=1 - inch(0.55), wspace=0.35, hspace=0.55)
  fig.legend([plt.Line2D([], [], color=colours[s]) for s in splits], splits,
             loc='upper center', ncol=len(splits), frameon=False, fontsize=9)
  return _save(fig, png_path, fit=False)


def alignments(examples, png_path):
  """Cross-attention heat maps, one panel per (source tokens, output tokens, weights [T, S]);
  tokens are lists of strings (characters or sub-words)."""
  fig, axes = plt.subplots(1, len(examples), figsize=(5 * len(examples), 4.5), squeeze=False)
  for ax, (source, output, weights) in zip(axes[0], examples):
    ax.imshow(weights[:len(output) + 1, :len(source)], cmap='viridis', aspect='auto')
    ax.set_xticks(range(len(source)), list(source), fontsize=7)
    ax.set_yticks(range(len(output) + 1), list(output) + ['</s>'], fontsize=7)
    ax.set_xlabel('source')
    ax.set_ylabel('output')
  return _save(fig, png_path, 'Decoder cross-attention (last layer, mean over heads)')


def detections(panels, png_path, title='Predicted boxes'):
  """One panel per (image uint8 [H, W, 3], boxes [N, 4] x0 y0 x1 y1 in pixels, captions [N])."""
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
  colours = plt.cm.tab10.colors
  for ax, (image, boxes, captions) in zip(axes[0], panels):
    ax.imshow(image)
    for i, ((x0, y0, x1, y1), caption) in enumerate(zip(boxes, captions)):
      colour = colours[i % len(colours)]
      ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=2))
      ax.text(x0, y0, caption, color='white', fontsize=7, va='bottom',
              bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0))
    ax.axis('off')
  return _save(fig, png_path, title)


def attention_per_object(image, objects, png_path, title='Decoder cross-attention per object'):
  """The image, then one panel per detected object: (box [4] in pixels, caption, attention
  map [h, w] over the feature grid), the map stretched over the image."""
  fig, axes = plt.subplots(1, len(objects) + 1, figsize=(3 * (len(objects) + 1), 3.3),
                           squeeze=False)
  axes[0, 0].imshow(image)
  axes[0, 0].set_title('image')
  height, width = image.shape[:2]
  for ax, ((x0, y0, x1, y1), caption, weights) in zip(axes[0, 1:], objects):
    ax.imshow(image, alpha=0.5)
    ax.imshow(weights, cmap='inferno', alpha=0.6, extent=(0, width, height, 0),
              interpolation='nearest')
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color='cyan', lw=2))
    ax.set_title(caption, fontsize=8)
  for ax in axes[0]:
    ax.axis('off')
  return _save(fig, png_path, title)


def sampling_points(image, objects, png_path,
                    title='Sampling points, last decoder layer'):
  """One panel per detected object: (box [4], caption, reference point (x, y), points [N, 2],
  weights [N]), all in pixels of `image`; points coloured and sized by their attention
  weight, the reference point a green cross (Deformable DETR's Fig. 6)."""
  fig, axes = plt.subplots(1, len(objects), figsize=(3.4 * len(objects), 3.4), squeeze=False)
  height, width = image.shape[:2]
  for ax, ((x0, y0, x1, y1), caption, reference, points, weights) in zip(axes[0], objects):
    ax.imshow(image, alpha=0.6)
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color='cyan', lw=1.5))
    order = np.argsort(weights)  # The heaviest points drawn last, on top.
    dots = ax.scatter(points[order, 0], points[order, 1], c=weights[order], cmap='inferno',
                      s=8 + 120 * weights[order] / max(weights.max(), 1e-9), edgecolors='none')
    ax.plot(*reference, marker='+', color='lime', markersize=14, mew=2.5)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_title(caption, fontsize=8)
    ax.axis('off')
    fig.colorbar(dots, ax=ax, fraction=0.046, pad=0.02, label='attention weight')
  return _save(fig, png_path, title)


def attention_maps(panels, png_path, title='Attention rollout'):
  """One column per (image [H, W] or [H, W, C], map [h, w] over the image, caption): the
  image above, the map stretched over it below."""
  fig, axes = plt.subplots(2, len(panels), figsize=(2.4 * len(panels), 5), squeeze=False)
  for (top, bottom), (image, weights, caption) in zip(axes.T, panels):
    height, width = image.shape[:2]
    cmap = 'gray' if image.ndim == 2 or image.shape[-1] == 1 else None
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    top.imshow(image, cmap=cmap)
    top.set_title(caption, fontsize=8)
    bottom.imshow(image, cmap=cmap, alpha=0.5)
    bottom.imshow(weights, cmap='inferno', alpha=0.6, extent=(0, width, height, 0),
                  interpolation='bilinear')
  for ax in axes.ravel():
    ax.axis('off')
  return _save(fig, png_path, title)


def attention_at_points(image, points, maps, png_path,
                        title='Encoder self-attention at chosen pixels'):
  """DETR Fig. 3: the image with the chosen pixels (x, y) marked, then for each pixel the
  encoder's attention map [h, w] from that position, stretched over the image."""
  fig, axes = plt.subplots(1, len(points) + 1, figsize=(3 * (len(points) + 1), 3.3),
                           squeeze=False)
  colours = plt.cm.tab10.colors
  height, width = image.shape[:2]
  axes[0, 0].imshow(image)
  axes[0, 0].set_title('image')
  for i, ((x, y), weights, ax) in enumerate(zip(points, maps, axes[0, 1:])):
    colour = colours[i % len(colours)]
    axes[0, 0].plot(x, y, 'o', color=colour, markersize=8, markeredgecolor='white')
    ax.imshow(weights, cmap='viridis', extent=(0, width, height, 0), interpolation='nearest')
    ax.plot(x, y, 'o', color=colour, markersize=6, markeredgecolor='white')
    ax.set_title(f'from pixel ({x:.0f}, {y:.0f})', fontsize=8)
  for ax in axes[0]:
    ax.axis('off')
  return _save(fig, png_path, title)


def channel_weights(weights, png_path, title):
  """A heat map of channel weights [classes, C] (rows: the classes' mean)."""
  fig, ax = plt.subplots(figsize=(min(2 + 0.06 * weights.shape[1], 16), 3.5))
  shown = ax.imshow(weights, aspect='auto', cmap='viridis', interpolation='nearest')
  ax.set_xlabel('channel')
  ax.set_ylabel('class')
  ax.set_yticks(range(weights.shape[0]))
  fig.colorbar(shown, ax=ax)
  return _save(fig, png_path, title)


def exact_match_by_length(curves, png_path):
  """curves: {(panel title, line label): (source lengths, exact match [0, 1], examples)}, one
  panel per title; the examples per bin (the same test split for every line) are written at
  the bottom."""
  titles = list(dict.fromkeys(title for title, _ in curves))
  fig, axes = plt.subplots(1, len(titles), figsize=(5.5 * len(titles), 4), squeeze=False)
  for ax, title in zip(axes[0], titles):
    mine = [(label, curve) for (panel, label), curve in curves.items() if panel == title]
    for label, (lengths, exact, _) in mine:
      ax.plot(lengths, exact, marker='o', label=label)
    lengths, _, counts = mine[0][1]
    for x, n in zip(lengths, counts):
      ax.annotate(f'n={n}', (x, -0.09), ha='center', fontsize=7, color='gray')
    ax.set_title(f'{title} (points: mean over a length bin)')
    ax.set_xlabel('source length (tokens)')
    ax.set_ylabel('exact match')
    ax.set_ylim(-0.12, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.16), ncol=2)
  return _save(fig, png_path, 'Greedy exact match by source length')


def segmentations(panels, classes, png_path, title='Semantic segmentation'):
  """Rows of (image uint8 [H, W, 3], label map [H, W], predicted map [H, W]): the image, then
  the truth and the prediction, one colour per class (IGNORE white)."""
  from vit_jax.data.segmentation import IGNORE
  palette = np.array(plt.cm.tab20.colors if len(classes) > 10 else plt.cm.tab10.colors)
  fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.5 * len(panels)), squeeze=False)
  for row, (image, label, predicted) in zip(axes, panels):
    row[0].imshow(image)
    for ax, classes_map, name in ((row[1], label, 'truth'), (row[2], predicted, 'predicted')):
      colour = palette[classes_map % len(palette)]
      ax.imshow(np.where((classes_map == IGNORE)[..., None], 1.0, colour))
      ax.set_title(name, fontsize=8)
    for ax in row:
      ax.axis('off')
  handles = [plt.Rectangle((0, 0), 1, 1, color=palette[k % len(palette)])
             for k in range(min(len(classes), len(palette)))]
  fig.legend(handles, classes[:len(handles)], loc='lower center', ncol=min(len(handles), 6),
             fontsize=7)
  return _save(fig, png_path, title)


def panoptic(panels, png_path, title='Panoptic segmentation'):
  """Rows of (image uint8 [H, W, 3], truth ids [H, W], {id: caption}, predicted ids [H, W],
  {id: caption}): the image, then each segment of the truth and of the prediction in its
  own colour over the faded image, captioned at its centre (void: the faded image alone)."""
  palette = np.array(plt.cm.tab10.colors)
  fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3 * len(panels)), squeeze=False)
  for row, (image, truth, truth_names, predicted, predicted_names) in zip(axes, panels):
    row[0].imshow(image)
    faded = image / 255.0 * 0.4 + 0.6
    for ax, ids, names, name in ((row[1], truth, truth_names, 'truth'),
                                 (row[2], predicted, predicted_names, 'predicted')):
      colour = palette[np.searchsorted(sorted(names), ids) % len(palette)]
      ax.imshow(np.where(np.isin(ids, list(names))[..., None], 0.6 * colour + 0.4 * faded,
                         faded))
      for segment, caption in names.items():
        ys, xs = np.nonzero(ids == segment)
        if len(ys):
          ax.text(xs.mean(), ys.mean(), caption, fontsize=6, ha='center', va='center',
                  bbox=dict(facecolor='white', alpha=0.7, pad=1, linewidth=0))
      ax.set_title(name, fontsize=8)
    for ax in row:
      ax.axis('off')
  return _save(fig, png_path, title)


def restorations(rows, png_path, title='Restoration (held-out crops)'):
  """rows: per task, per example, a list of (caption, image uint8 [H, W, 3]) shown side by
  side; images of different sizes are drawn at the same size (nearest for small inputs)."""
  columns = max(len(example) for row in rows for example in row) * max(len(r) for r in rows)
  fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.9 * len(rows)),
                           squeeze=False)
  for ax_row, row in zip(axes, rows):
    panels = [panel for example in row for panel in example]
    for ax in ax_row:
      ax.axis('off')
    for ax, (caption, image) in zip(ax_row, panels):
      ax.imshow(image, interpolation='nearest')
      ax.set_title(caption, fontsize=7)
  return _save(fig, png_path, title)


def image_grid(rows, png_path, title=None):
  """rows: (caption, images uint8 [N, H, W, C]) per row, drawn side by side, the caption on
  the row's first image; grayscale (C = 1) in gray."""
  columns = max(len(images) for _, images in rows)
  fig, axes = plt.subplots(len(rows), columns, figsize=(0.9 * columns, 1.0 * len(rows) + 0.4),
                           squeeze=False)
  for ax_row, (caption, images) in zip(axes, rows):
    for ax in ax_row:
      ax.axis('off')
    for ax, image in zip(ax_row, images):
      gray = image.shape[-1] == 1
      ax.imshow(image[..., 0] if gray else image, cmap='gray' if gray else None,
                vmin=0, vmax=255, interpolation='nearest')
    ax_row[0].set_title(caption, fontsize=7, loc='left')
  return _save(fig, png_path, title)
