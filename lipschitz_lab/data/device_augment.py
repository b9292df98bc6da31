"""The paper's augmentations on a whole batch, on the batch's device.

The same distributions as :mod:`.transforms` (torchvision on one PIL image at
a time), drawn per sample from one generator on the device, with no loop over
samples and no host sync:

- ``"cifar"``: ``RandomCrop(size, padding=4)`` then ``RandomHorizontalFlip()``:
  offsets ``dy, dx ~ U{0..8}`` into the zero-padded image, then a mirror with
  probability 1/2 -- two ``gather``\\ s and a mask.
- ``"mnist"``: ``RandomAffine(15, translate=(0.1, 0.1), scale=(0.9, 1.1))``:
  angle ``~ U(-15, 15)`` degrees, shifts ``round(U(-0.1 W, 0.1 W))`` and
  ``round(U(-0.1 H, 0.1 H))`` whole pixels, scale ``~ U(0.9, 1.1)``, nearest
  neighbour with zero fill -- one ``affine_grid`` + ``grid_sample``, with the
  matrix torchvision builds (``_get_inverse_affine_matrix``, centre of the image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lipschitz_lab.data.transforms import AUGMENTATIONS

PAD = 4                      # CIFAR: pixels of zero padding before the random crop
DEGREES = 15.0               # MNIST: rotation range, +-degrees
TRANSLATE = 0.1              # MNIST: shift range, fraction of width / height
SCALE = (0.9, 1.1)           # MNIST: zoom range


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              pad: int = PAD) -> torch.Tensor:
    """Crop each image of ``x`` (B x C x H x W) at ``(dy, dx)`` of its zero-padded copy; mirror where ``flip``.

    ``out[b, :, i, j] = padded[b, :, dy + i, dx + j']`` with ``j' = W - 1 - j`` when
    flipped, and ``padded[.., r, c] = x[.., r - pad, c - pad]`` (0 outside).
    """
    B, C, H, W = x.shape
    rows = torch.arange(H, device=x.device) + dy[:, None] - pad                   # B x H
    cols = torch.arange(W, device=x.device).expand(B, W)
    cols = torch.where(flip[:, None], W - 1 - cols, cols) + dx[:, None] - pad     # B x W
    inside = (((rows >= 0) & (rows < H))[:, :, None]) & (((cols >= 0) & (cols < W))[:, None, :])
    out = x.gather(2, rows.clamp(0, H - 1)[:, None, :, None].expand(B, C, H, W))
    out = out.gather(3, cols.clamp(0, W - 1)[:, None, None, :].expand(B, C, H, W))
    return out * inside[:, None].to(out.dtype)


def affine(x: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
           scale: torch.Tensor) -> torch.Tensor:
    """torchvision's ``F.affine(img, angle, [tx, ty], scale, shear=0)`` for each image of float ``x``.

    .. math::
        p_\\text{in} = \\tfrac{1}{s} R(-\\theta)\\,(p_\\text{out} - t)

    where :math:`p` is a pixel centre's offset from the image centre, :math:`\\theta`
    the angle, :math:`s` the scale and :math:`t = (t_x, t_y)` the shift in pixels
    (content moves right and down for positive shifts).  In ``grid_sample``'s
    normalised coordinates, :math:`D^{-1} M D` with :math:`D = \\mathrm{diag}(W/2, H/2)`.
    """
    B, C, H, W = x.shape
    rad = torch.deg2rad(angle.to(torch.float32))
    cos, sin = torch.cos(rad) / scale, torch.sin(rad) / scale
    # M = R(-theta) / s, the inverse of the forward rotation-and-zoom (torchvision's [d, -b; -c, a])
    m00, m01, m10, m11 = cos, sin, -sin, cos
    hw, hh = W / 2.0, H / 2.0
    theta = torch.stack([
        torch.stack([m00, m01 * hh / hw, -(m00 * tx + m01 * ty) / hw], dim=1),
        torch.stack([m10 * hw / hh, m11, -(m10 * tx + m11 * ty) / hh], dim=1),
    ], dim=1)                                                                       # B x 2 x 3
    grid = F.affine_grid(theta.to(x.dtype), [B, C, H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_cifar(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random pad-4 crop and horizontal flip of each image, parameters from ``gen``."""
    B, dev = x.shape[0], x.device
    dy = torch.randint(0, 2 * PAD + 1, (B,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * PAD + 1, (B,), generator=gen, device=dev)
    flip = torch.rand(B, generator=gen, device=dev) < 0.5
    return crop_flip(x, dy, dx, flip)


def random_mnist(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation, whole-pixel shift and zoom of each image, parameters from ``gen``."""
    B, _, H, W = x.shape
    dev = x.device
    angle = _uniform(B, -DEGREES, DEGREES, gen, dev)
    # torchvision rounds the shift to whole pixels (Python's round: half to even, as torch.round)
    tx = torch.round(_uniform(B, -TRANSLATE * W, TRANSLATE * W, gen, dev))
    ty = torch.round(_uniform(B, -TRANSLATE * H, TRANSLATE * H, gen, dev))
    scale = _uniform(B, SCALE[0], SCALE[1], gen, dev)
    return affine(x, angle, tx, ty, scale)


def augment(x: torch.Tensor, style: str | None, gen: torch.Generator) -> torch.Tensor:
    """``x`` (float, B x C x H x W) under the augmentation ``style``; None returns ``x``."""
    if style is None:
        return x
    if style == "cifar":
        return random_cifar(x, gen)
    if style == "mnist":
        return random_mnist(x, gen)
    raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)} or None; got augmentation={style!r}")
