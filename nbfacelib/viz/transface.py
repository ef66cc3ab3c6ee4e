"""Figures of notebook 07 (TransFace): SE patch-weight maps over faces, accuracy under
occlusion, and the DPAP explorer (a face, its patch weights, its perturbed version). Inputs
are plain data (arrays, rows); each function returns a matplotlib figure and never calls
``show``. viz never imports an experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbfacelib.viz.results import colour


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _hwc(image: np.ndarray) -> np.ndarray:
    """uint8 (3, H, W) -> (H, W, 3) for imshow."""
    return np.transpose(np.asarray(image), (1, 2, 0))


def _overlay(ax, image: np.ndarray, grid_map: np.ndarray, patch_size: int, title: str = "") -> Any:
    """A face with its token-grid map drawn over the cells it covers (the unused border stays
    bare), in a shared colour scale where 1 is the uniform weight."""
    ax.imshow(_hwc(image))
    rows, cols = grid_map.shape
    extent = (-0.5, cols * patch_size - 0.5, rows * patch_size - 0.5, -0.5)
    im = ax.imshow(
        grid_map, cmap="magma", alpha=0.55, extent=extent, vmin=0.0, vmax=max(2.0, float(grid_map.max()))
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return im


def weight_maps_figure(
    mean_maps: Mapping[str, np.ndarray],
    faces: np.ndarray,
    face_maps: np.ndarray,
    patch_size: int,
    mean_face: np.ndarray | None = None,
):
    """Top row: the patch-weight map averaged over held-out faces for each model (over the mean
    face when given); bottom row: single faces with the first model's map. Maps are weights x
    P (1 = uniform)."""
    plt = _plt()
    n_top, n_faces = len(mean_maps), len(faces)
    cols = max(n_top, n_faces)
    fig, axes = plt.subplots(2, cols, figsize=(2.4 * cols, 4.8), squeeze=False)
    background = mean_face if mean_face is not None else faces[0]
    im = None
    for j, (name, grid_map) in enumerate(mean_maps.items()):
        im = _overlay(axes[0, j], background, grid_map, patch_size, f"{name} (mean of faces)")
    for j in range(n_faces):
        _overlay(axes[1, j], faces[j], face_maps[j], patch_size, f"face {j}")
    for ax in axes.flat:
        if not ax.images:
            ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="patch weight x P (1 = uniform)")
    return fig


def occlusion_figure(rows: Sequence[Mapping[str, Any]], variants: Sequence[str], occlusions: Sequence[str]):
    """Mean accuracy (over seeds, with the seeds as dots) per occlusion, one bar per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.4 + 1.2 * len(occlusions), 3.4))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        for j, occ in enumerate(occlusions):
            vals = [float(r["accuracy"]) for r in rows if r["variant"] == v and r["occlusion"] == occ]
            if not vals:
                continue
            x = j + (i - (len(variants) - 1) / 2) * width
            ax.bar(x, np.mean(vals), width, color=colour(v, i), label=v if j == 0 else None)
            ax.plot([x] * len(vals), vals, "k.", ms=3)
    ax.set_xticks(range(len(occlusions)), occlusions)
    ax.set_ylabel("10-fold accuracy")
    ax.set_ylim(0.45, 1.0)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("held-out pairs, second image occluded", fontsize=10)
    fig.tight_layout()
    return fig


def dpap_explorer(examples: Mapping[str, Any], index: int = 0):
    """One face (``examples`` from the experiment's ``dpap_examples``): the image, its patch
    weights with the top-K cells outlined, and its DPAP-perturbed version."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    ps = int(examples["patch_size"])
    grid_map = examples["maps"][index]
    cols = grid_map.shape[1]
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    axes[0].imshow(_hwc(examples["images"][index]))
    axes[0].set_title("face", fontsize=9)
    _overlay(axes[1], examples["images"][index], grid_map, ps, "SE patch weights, top-K outlined")
    for cell in examples["top"][index]:
        r, c = divmod(int(cell), cols)
        axes[1].add_patch(Rectangle((c * ps - 0.5, r * ps - 0.5), ps, ps, fill=False, ec="cyan", lw=1.2))
    axes[2].imshow(_hwc(examples["perturbed"][index]))
    axes[2].set_title("after DPAP (amplitude mixed)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
