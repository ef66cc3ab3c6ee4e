"""insightface arcface_torch's training step, re-typed as the baseline of the throughput benchmarks.

What arcface_torch ``train_v2.py`` runs per step for ``network="r50"``, ``fp16=True``,
``margin_list=(1.0, 0.5, 0.0)`` (ArcFace), SGD, ``gradient_acc=1``: its IResNet (the body under
``torch.cuda.amp.autocast(fp16)``, the 512*7*7 -> 512 ``fc`` and ``features`` BatchNorm1d in
float32), ``PartialFC_V2`` built with ``fp16=False`` as train_v2 does (normalised matmul in
float32, clamp),
``CombinedMarginLoss`` (ArcFace branch: the margin applied to ``arccos`` of the logits under
``torch.no_grad()``, then ``* s``), ``DistCrossEntropyFunc`` (in-place softmax, its closed-form
backward), ``GradScaler(growth_interval=100)``, unscale, ``clip_grad_norm_(backbone, 5)``,
``amp.step``/``amp.update``, ``opt.zero_grad()``, ``PolyScheduler.step()`` and the
``loss.item()`` of its logging callback. NCHW tensors, no bf16, no channels-last, no compile.

Re-typed from the public source (deepinsight/insightface ``recognition/arcface_torch``:
``backbones/iresnet.py``, ``partial_fc_v2.py``, ``losses.py``, ``lr_scheduler.py``,
``train_v2.py``) rather than imported, because that code cannot be imported here: it sets up an
NCCL process group at import time and hard-codes ``.cuda()``. Differences, all for one process
on one device, none of which can make the baseline slower:
- world size 1: the ``all_gather`` / ``all_reduce`` calls of Partial FC and the cross-entropy
  (identities at world size 1) and the ``DistributedDataParallel`` wrapper are left out (with
  one process DDP would still launch a gradient all-reduce per bucket; leaving it out makes
  the baseline faster, so the ratio against it is conservative);
- ``.cuda()`` is the device of the tensors (so the same code runs on the CPU in the dry run,
  where ``torch.autocast("cuda")`` leaves CPU tensors in float32, as arcface_torch would);
- no DataLoader / DALI: both loops get the same pre-rendered, normalised batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import linear, normalize


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return out


class IResNet(nn.Module):
    """arcface_torch ``IResNet`` with its ``fp16`` flag: autocast over the body only."""

    fc_scale = 7 * 7

    def __init__(self, layers, num_features: int = 512, fp16: bool = False, width: int = 64):
        super().__init__()
        self.fp16 = fp16
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-05)
        self.prelu = nn.PReLU(width)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1])
        self.layer3 = self._make_layer(4 * width, layers[2])
        self.layer4 = self._make_layer(8 * width, layers[3])
        self.bn2 = nn.BatchNorm2d(8 * width, eps=1e-05)
        self.dropout = nn.Dropout(p=0.0, inplace=True)
        self.fc = nn.Linear(8 * width * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        with torch.autocast("cuda", enabled=self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)


# name -> (blocks per stage, stem width); "ir_tiny" matches nbfacelib's ir_tiny for the CPU dry run
NETWORKS = {
    "r18": ((2, 2, 2, 2), 64),
    "r34": ((3, 4, 6, 3), 64),
    "r50": ((3, 4, 14, 3), 64),
    "r100": ((3, 13, 30, 3), 64),
    "ir_tiny": ((1, 1, 1, 1), 16),
    "ir_small": ((2, 2, 2, 2), 16),
}


class CombinedMarginLoss(nn.Module):
    """The ArcFace branch (m1 = 1, m3 = 0) of arcface_torch's ``CombinedMarginLoss``."""

    def __init__(self, s: float = 64.0, m2: float = 0.5):
        super().__init__()
        self.s, self.m2 = s, m2

    def forward(self, logits, labels):
        index_positive = torch.where(labels != -1)[0]
        target_logit = logits[index_positive, labels[index_positive].view(-1)]
        with torch.no_grad():  # as arcface_torch: the margin is invisible to autograd
            target_logit.arccos_()
            logits.arccos_()
            final_target_logit = target_logit + self.m2
            logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
            logits.cos_()
        return logits * self.s


class DistCrossEntropyFunc(torch.autograd.Function):
    """arcface_torch's softmax cross-entropy with its in-place forward and closed-form backward
    (the world-size-1 all-reduces left out)."""

    @staticmethod
    def forward(ctx, logits, label):
        batch_size = logits.size(0)
        max_logits, _ = torch.max(logits, dim=1, keepdim=True)
        logits.sub_(max_logits)
        logits.exp_()
        sum_logits_exp = torch.sum(logits, dim=1, keepdim=True)
        logits.div_(sum_logits_exp)
        index = torch.where(label != -1)[0]
        loss = torch.zeros(batch_size, 1, device=logits.device)
        loss[index] = logits[index].gather(1, label[index])
        ctx.save_for_backward(index, logits, label)
        return loss.clamp_min_(1e-30).log_().mean() * (-1)

    @staticmethod
    def backward(ctx, loss_gradient):
        index, logits, label = ctx.saved_tensors
        batch_size = logits.size(0)
        one_hot = torch.zeros(size=[index.size(0), logits.size(1)], device=logits.device)
        one_hot.scatter_(1, label[index], 1)
        logits[index] -= one_hot
        logits.div_(batch_size)
        return logits * loss_gradient.item(), None


class PartialFCV2(nn.Module):
    """arcface_torch ``PartialFC_V2`` at world size 1."""

    def __init__(self, margin_loss, embedding_size: int, num_classes: int, sample_rate: float, fp16: bool):
        super().__init__()
        self.embedding_size, self.sample_rate, self.fp16 = embedding_size, sample_rate, fp16
        self.num_local, self.class_start = num_classes, 0
        self.num_sample = int(sample_rate * num_classes)
        self.weight = nn.Parameter(torch.normal(0, 0.01, (num_classes, embedding_size)))
        self.margin_softmax = margin_loss

    def sample(self, labels, index_positive):
        with torch.no_grad():
            positive = torch.unique(labels[index_positive], sorted=True)
            if self.num_sample - positive.size(0) >= 0:
                perm = torch.rand(size=[self.num_local], device=labels.device)
                perm[positive] = 2.0
                index = torch.topk(perm, k=self.num_sample)[1]
                index = index.sort()[0]
            else:
                index = positive
            self.weight_index = index
            labels[index_positive] = torch.searchsorted(index, labels[index_positive])
        return self.weight[self.weight_index]

    def forward(self, embeddings, labels):
        labels = labels.squeeze().long().view(-1, 1)
        index_positive = (self.class_start <= labels) & (labels < self.class_start + self.num_local)
        labels[~index_positive] = -1
        labels[index_positive] -= self.class_start
        weight = self.sample(labels, index_positive) if self.sample_rate < 1 else self.weight
        with torch.autocast("cuda", enabled=self.fp16):
            logits = linear(normalize(embeddings), normalize(weight))
        if self.fp16:
            logits = logits.float()
        logits = logits.clamp(-1, 1)
        logits = self.margin_softmax(logits, labels)
        return DistCrossEntropyFunc.apply(logits, labels)


class PolyScheduler(torch.optim.lr_scheduler.LRScheduler):
    """arcface_torch's ``PolyScheduler``: linear warm-up, then (1 - progress)^2."""

    def __init__(self, optimizer, base_lr: float, max_steps: int, warmup_steps: int):
        self.base_lr, self.max_steps, self.warmup_steps, self.power = base_lr, max_steps, warmup_steps, 2
        self.warmup_lr_init = 0.0001
        super().__init__(optimizer, -1)

    def get_lr(self):
        if self.last_epoch == -1:
            return [self.warmup_lr_init for _ in self.optimizer.param_groups]
        if self.last_epoch < self.warmup_steps:
            return [self.base_lr * self.last_epoch / self.warmup_steps for _ in self.optimizer.param_groups]
        progress = (self.last_epoch - self.warmup_steps) / (self.max_steps - self.warmup_steps)
        return [
            self.base_lr * math.pow(max(0.0, 1 - progress), self.power) for _ in self.optimizer.param_groups
        ]


def make_step(network: str, images, labels, num_classes: int, device, sample_rate: float = 1.0):
    """One arcface_torch training configuration on ``device``; returns a function that runs one
    optimizer step of its loop on the given batch and returns the seconds it took."""
    import time

    from nbfacelib.data.transforms import normalize as pixels

    fp16 = device.type == "cuda"  # its autocast("cuda") leaves CPU tensors alone anyway
    torch.manual_seed(0)
    if network not in NETWORKS:
        raise ValueError(f"arcface_torch baseline: no network {network!r}; known: {', '.join(NETWORKS)}")
    layers, width = NETWORKS[network]
    backbone = IResNet(layers, 512, fp16=fp16, width=width).to(device)
    backbone.train()
    # train_v2 builds PartialFC_V2 with fp16=False (current master; early versions passed
    # cfg.fp16): the embeddings leave the backbone in float32 and the cosine matmul runs in it
    module_partial_fc = PartialFCV2(CombinedMarginLoss(64, 0.5), 512, num_classes, sample_rate, fp16=False)
    module_partial_fc.train().to(device)
    opt = torch.optim.SGD(
        params=[{"params": backbone.parameters()}, {"params": module_partial_fc.parameters()}],
        lr=0.02,
        momentum=0.9,
        weight_decay=5e-4,
    )
    lr_scheduler = PolyScheduler(opt, base_lr=0.02, max_steps=10**6, warmup_steps=10**5)
    amp = torch.amp.GradScaler("cuda", growth_interval=100, enabled=fp16)
    img = pixels(images.to(device))  # NCHW, as its DataLoader yields
    local_labels = labels.to(device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        local_embeddings = backbone(img)
        loss = module_partial_fc(local_embeddings, local_labels.clone())
        loss_show = loss.clone()
        amp.scale(loss).backward()
        amp.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
        amp.step(opt)
        amp.update()
        opt.zero_grad()
        lr_scheduler.step()
        loss_show.item()  # its AverageMeter / logging callback reads the loss every step
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step
