"""The network a decoder is trained in, and one optimisation step.

:class:`InversionModel` chains an optional encoder (features computed on the
fly, or fine-tuned in the autoencoder mode of Dosovitskiy & Brox 2016,
section 4.2) and the decoder.  :func:`train_step` minimises the squared error
between the decoder's output and the image (equation 3 of the paper) in
normalised pixel units ``t = x / 127.5 - 1``, the target resized to the
decoder's native size; :func:`lr_at` is the step decay of the learning rate.
:func:`_amp_dtype` picks the mixed precision (bf16, or fp16 with a
GradScaler, on CUDA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.decoders.architectures import Decoder, resize_images

class InversionModel(nn.Module):
    """Optional encoder (on-the-fly features) followed by the decoder.

    ``forward(images, features=None)``: images (B, 3, H, W) float in [0, 255];
    when ``features`` is None they are computed by the encoder, without
    gradients unless ``finetune`` (autoencoder mode).
    """

    def __init__(self, decoder: Decoder, encoder: nn.Module | None = None, finetune: bool = False):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder
        self.finetune = finetune
        if encoder is not None and not finetune:
            encoder.requires_grad_(False)

    def encode(self, images):
        if self.finetune:
            return self.encoder(images)
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.encoder(images.float()).float()

    def forward(self, images, features=None):
        if features is None:
            features = self.encode(images)
        return self.decoder(features)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and not self.finetune:
            self.encoder.eval()
        return self


def lr_at(step: int, total: int, base: float, milestones=(0.6, 0.8, 0.9), gamma: float = 0.5) -> float:
    """Step decay: ``base * gamma ** (number of milestones m with step >= m * total)``."""
    return base * gamma ** sum(step >= m * total for m in milestones)


def _amp_dtype(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def train_step(model, optimizer, scaler, images_u8, features, native_size, amp_dtype=None,
               channels_last=False, clip_grad: float | None = None):
    """One optimisation step; returns the detached (loss, gradient norm) tensors.

    ``images_u8`` (B, H, W, 3) uint8 and ``features`` (B, D, h, w) or None, on
    the training device.  ``clip_grad``: rescale the gradients so that their
    global L2 norm is at most this (None: no clipping); the norm returned is
    the one before clipping.
    """
    x = images_u8.permute(0, 3, 1, 2).float()
    target = Decoder.to_target(resize_images(x, native_size))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        if features is not None and features.dim() == 4:
            features = features.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        pred = model(x, features)
    loss = F.mse_loss(pred.float(), target)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), norm.detach()
