"""Face-recognition backbones, chosen by name.

    from nbfacelib.models import build_backbone, list_backbones
    model = build_backbone("r50")                       # IResNet-50, 112x112 -> 512
    small = build_backbone("iresnet", layers=[1, 1, 1, 1], width=0.25)
    list_backbones("mbf*")                              # ['mbf', 'mbf_large', 'mbf_tiny']

The contract every registered backbone honours (``tests/test_models.py`` checks it for all of
them, including families added later):

- input: float tensor (B, 3, H, W), RGB normalised as ``nbfacelib.data.transforms.normalize``
  ((x/255 - 0.5) / 0.5), at the model's ``input_size``; contiguous or channels-last;
- ``forward(x) -> (B, embedding_size)``: the embedding, **not** L2-normalised (MagFace and PFE
  read its norm; the losses and the evaluation normalise where their formula says so);
- ``forward_features(x)``: the last feature map before the head (for CNNs (B, C, h, w) with
  ``C == model.num_features``); ``forward_head(features)`` finishes the job;
- attributes ``embedding_size``, ``input_size`` (int or (H, W)), ``num_features``;
- constructor / factory keywords shared by all families: ``embedding_size``, ``input_size``,
  ``dropout``; depth/width families also take ``layers`` and ``width``;
- no ``fp16`` argument: precision is the training engine's autocast (one switch for backbone,
  loss and Partial FC). As in arcface_torch, whose forward runs under ``autocast(fp16)`` except
  the embedding head, the head (IResNet ``fc`` + ``features``, MobileFaceNet ``conv_sep`` + GDC)
  runs in float32 with autocast off (``layers.float32_head``), so the embedding is float32;
  without autocast the model runs as it is (CPU, ONNX export, a model cast to half).
- ``forward`` may return a :class:`~nbfacelib.models.output.BackboneOutput` instead of the
  embedding tensor (patch weights, a PFE variance, named features); callers read it through
  ``as_output(model(x)).embedding``.

IResNet and MobileFaceNet keep arcface_torch's module names, so its released backbone weights
load as they are: ``model.load_state_dict(torch.load("backbone.pth", weights_only=True))``.

To add a family: write ``nbfacelib/models/<family>.py`` with ``@register_backbone`` factories
and import it below. Parameter / FLOP counting: ``nbfacelib.models.complexity``.
"""

from nbfacelib.models import (  # noqa: F401  (registers the families)
    iresnet,
    mobilefacenet,
    pfe_head,
    swin,
    vargfacenet,
    vit,
)
from nbfacelib.models.registry import BACKBONES, build_backbone, list_backbones, register_backbone

__all__ = ["BACKBONES", "build_backbone", "list_backbones", "register_backbone"]
