"""CycleGAN networks (Zhu et al., ICCV'17): ResNet generator, 70x70 PatchGAN discriminator, image pool, init.

Architectures follow the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix) with instance norm
(``affine=False``, no running statistics) and therefore convolution biases:

- ``ResnetGenerator``: c7s1-ngf, d2ngf, d4ngf (3x3 stride 2), ``n_blocks`` residual blocks of 4ngf (reflection
  padding), u2ngf, ungf (3x3 transposed, stride 2), c7s1-out, tanh. Images live in [-1, 1]; the output has the
  input's HxW (sizes that are not multiples of 4 are reflection-padded up to one and cropped back).
- ``PatchDiscriminator``: C64 (no norm), C128, C256 (4x4 stride 2), C512 (4x4 stride 1), 1-channel 4x4 stride 1
  conv; leaky ReLU 0.2. With ``n_layers=3`` each output logit sees a 70x70 input patch; a 256x256 input gives a
  30x30 map.
- ``ImagePool``: the history buffer of Shrivastava et al. that CycleGAN's discriminators train on.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dasuite.errors import DasuiteError


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """CycleGAN's ``normal`` init: conv / transposed-conv / linear weights ~ N(0, std), biases 0; affine norm
    weights ~ N(1, std), biases 0. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + [reflect-pad 1, conv3x3, IN, ReLU, reflect-pad 1, conv3x3, IN](x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Bx``in_ch``xHxW in [-1, 1] -> Bx``out_ch``xHxW in [-1, 1] (tanh); see the module docstring."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        if n_blocks < 0 or ngf <= 0:
            raise ValueError(f"ResnetGenerator needs ngf > 0 and n_blocks >= 0, got ngf={ngf}, n_blocks={n_blocks}")
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):  # downsampling
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), _norm(ngf * mult * 2),
                       nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):  # upsampling
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 4, -w % 4
        if pad_h or pad_w:  # the two stride-2 stages need multiples of 4 to return the input size exactly
            return self.net(F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))[..., :h, :w]
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: Bx``in_ch``xHxW -> Bx1xH'xW' raw logits, one per (70x70 for ``n_layers=3``) input patch."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1 or ndf <= 0:
            raise ValueError(f"PatchDiscriminator needs ndf > 0 and n_layers >= 1, got ndf={ndf}, n_layers={n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), _norm(out), nn.LeakyReLU(0.2, True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleGenerators(nn.ModuleDict):
    """The two generators of a CycleGAN, ``source_to_target`` and ``target_to_source``, as one module whose
    ``forward`` runs every generator pass of a training step (so a DDP-wrapped copy is called once per step)."""

    def forward(self, source: torch.Tensor, target: torch.Tensor, identity: bool = True) -> dict[str, torch.Tensor]:
        """Images in [-1, 1] -> ``fake_target = G_st(source)``, ``fake_source = G_ts(target)``, the cycles
        ``rec_source = G_ts(fake_target)``, ``rec_target = G_st(fake_source)`` and, with ``identity``,
        ``idt_target = G_st(target)``, ``idt_source = G_ts(source)``."""
        g_st, g_ts = self["source_to_target"], self["target_to_source"]
        out = {"fake_target": g_st(source), "fake_source": g_ts(target)}
        out["rec_source"], out["rec_target"] = g_ts(out["fake_target"]), g_st(out["fake_source"])
        if identity:
            out["idt_target"], out["idt_source"] = g_st(target), g_ts(source)
        return out


class ImagePool:
    """History of up to ``size`` generated images (Shrivastava et al. 2017, as CycleGAN uses it).

    ``query(images)`` walks the batch in order: while the pool is not full, each image is stored and returned;
    afterwards, with probability 0.5 a uniformly chosen stored image is returned and the new one takes its place,
    otherwise the new image is returned. ``size == 0`` returns the batch unchanged. The buffer lives on the images'
    device (float32, detached); decisions use torch's global RNG on that device (checkpointed by the engine) and
    never synchronise with the host. ``state_dict`` holds the stored images, so a resumed run continues exactly.
    """

    def __init__(self, size: int = 50) -> None:
        if size < 0:
            raise ValueError(f"ImagePool size must be >= 0, got {size}")
        self.size = size
        self.count = 0
        self.images: Optional[torch.Tensor] = None  # (size, C, H, W) once the first batch arrives

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Bx... images -> Bx... images to show the discriminator (see the class docstring); no gradient."""
        images = images.detach()
        if self.size == 0:
            return images
        if self.images is None:
            self.images = images.new_zeros((self.size, *images.shape[1:]), dtype=torch.float32)
        elif self.images.shape[1:] != images.shape[1:]:
            raise DasuiteError(f"ImagePool holds images of shape {tuple(self.images.shape[1:])}, got "
                             f"{tuple(images.shape[1:])}: CycleGAN training crops must have one size")
        out = []
        for image in images.float():
            if self.count < self.size:
                self.images[self.count] = image
                self.count += 1
                out.append(image)
                continue
            swap = torch.rand((), device=image.device) < 0.5
            index = torch.randint(self.size, (1,), device=image.device)
            stored = self.images.index_select(0, index)[0]
            self.images.index_copy_(0, index, torch.where(swap, image, stored).unsqueeze(0))
            out.append(torch.where(swap, stored, image))
        return torch.stack(out).to(images.dtype)

    def state_dict(self) -> dict[str, Any]:
        stored = None if self.images is None else self.images[: self.count].detach().cpu().clone()
        return {"size": self.size, "count": self.count, "images": stored}

    def load_state_dict(self, state: dict[str, Any], device: Optional[torch.device] = None) -> None:
        """Restore ``state_dict``'s content (onto ``device`` when given); the pool size must be the same."""
        if state["size"] != self.size:
            raise ValueError(f"ImagePool: checkpoint pool size {state['size']} differs from the configured {self.size}")
        self.count = state["count"]
        stored = state["images"]
        if stored is None:
            self.images = None
            return
        self.images = stored.new_zeros((self.size, *stored.shape[1:]))
        self.images[: self.count] = stored
        if device is not None:
            self.images = self.images.to(device)
