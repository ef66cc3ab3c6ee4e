"""Embeddings for evaluation, with the flip test-time augmentation of arcface_torch.

``embedding = normalize(f(x) + f(flip(x)))``: pixels go through
:func:`nbfacelib.data.transforms.normalize` ((x/255 - 0.5)/0.5), ``flip`` mirrors the width
axis, the two outputs are summed before L2 normalisation (as arcface_torch's ``test``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["embed", "evaluate_pair_set"]


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _batches(images, batch_size: int, num_workers: int):
    """Yield uint8 ``(B, 3, H, W)`` batches from a tensor, a Dataset or a DataLoader."""
    from torch.utils.data import DataLoader

    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        for s in range(0, len(images), batch_size):
            yield images[s : s + batch_size]
        return
    if not isinstance(images, DataLoader):
        images = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in images:
        # Datasets yield (image, label) pairs; the default collate makes [images, labels].
        yield batch[0] if isinstance(batch, list | tuple) else batch


def _length(images) -> int | None:
    try:
        if hasattr(images, "dataset") and hasattr(images, "batch_size"):  # DataLoader
            return len(images.dataset)
        return len(images)
    except TypeError:
        return None


def embed(
    model,
    images,
    batch_size: int = 256,
    device=None,
    flip: bool = True,
    progress: bool = True,
    normalize: bool = True,
    amp: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of ``images``: a uint8 tensor ``(N, 3, H, W)``, a Dataset
    (``ds[i]`` an image or ``(image, label)``) or a DataLoader of such batches.

    ``flip``: add the embedding of the horizontally mirrored image. ``normalize``: L2-normalise
    the result (``sklearn.preprocessing.normalize``, as arcface_torch). ``amp``: fp16 autocast
    on CUDA (ignored elsewhere). The model runs in eval mode under ``torch.inference_mode()``
    and its train/eval mode is restored afterwards. ``device`` defaults to the model's.
    """
    from tqdm.auto import tqdm

    from nbfacelib.data.transforms import normalize as pixels
    from nbfacelib.models.output import as_output

    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    out = []
    use_amp = amp and device.type == "cuda"
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp),
            tqdm(total=_length(images), desc="embed", unit="img", disable=not progress) as bar,
        ):
            for batch in _batches(images, batch_size, num_workers):
                x = pixels(batch.to(device, non_blocking=True))
                e = as_output(model(x)).embedding.float()
                if flip:
                    e = e + as_output(model(x.flip(3))).embedding.float()
                out.append(e.cpu())
                bar.update(len(batch))
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("no images to embed")
    emb = torch.cat(out).numpy()
    if not normalize:
        return emb
    # imported here, not above: the engine embeds with normalize=False and must run where
    # scikit-learn is not installed (the GPU machine of benchmarks/gpu_check.sh)
    from sklearn.preprocessing import normalize as l2_normalize

    return l2_normalize(emb)


def evaluate_pair_set(
    model,
    pair_set,
    size: int = 112,
    batch_size: int = 256,
    device=None,
    flip: bool = True,
    progress: bool = True,
    amp: bool = False,
    num_workers: int = 0,
    nfolds: int = 10,
    method: str = "fast",
    **kwargs,
) -> dict:
    """Decode (lazily) and embed the ``2N`` images of a :class:`~nbfacelib.data.pairs.PairSet`
    (or a path to a ``.bin``) and return :func:`~nbfacelib.eval.verification.evaluate` of
    pairs ``(2i, 2i+1)``. Embeddings are left unnormalised here so that ``evaluate`` normalises
    exactly once, as arcface_torch does."""
    from nbfacelib.data.pairs import PairSet, load_pairs
    from nbfacelib.eval.verification import evaluate

    if not isinstance(pair_set, PairSet):
        pair_set = load_pairs(pair_set)
    emb = embed(
        model,
        pair_set.as_dataset(size),
        batch_size=batch_size,
        device=device,
        flip=flip,
        progress=progress,
        normalize=False,
        amp=amp,
        num_workers=num_workers,
    )
    return evaluate(emb[0::2], emb[1::2], pair_set.issame, nfolds=nfolds, method=method, **kwargs)
