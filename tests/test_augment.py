"""Device augmentation: ignore value through pad/crop/scale, image/label alignment, reproducibility."""

import pytest
import torch
from pydantic import ValidationError

from dasuite.data.augment import (
    AugmentConfig,
    ColorJitterConfig,
    DeviceAugment,
    StrongConfig,
    denormalize,
    normalize,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PALETTE = torch.tensor(
    [[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20], [20, 230, 230], [230, 20, 230], [240, 240, 240]],
    dtype=torch.uint8,
)


def blocky_pair(b: int = 4, h: int = 48, w: int = 64, block: int = 8, seed: int = 0):
    """Random class blocks (labels 1..6, never 0) and an image that paints each class in its palette colour."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(1, len(PALETTE), (b, h // block, w // block), generator=g)
    labels = small.repeat_interleave(block, 1).repeat_interleave(block, 2)
    images = PALETTE[labels].permute(0, 3, 1, 2).contiguous()
    return images, labels


def nearest_palette_class(images_float: torch.Tensor) -> torch.Tensor:
    rgb = denormalize(images_float).float().permute(0, 2, 3, 1)  # BxHxWx3
    dist = ((rgb[..., None, :] - PALETTE.float().to(rgb.device)) ** 2).sum(-1)
    return dist.argmin(-1)


@pytest.mark.parametrize("device", DEVICES)
def test_identity_config_only_normalises(device):
    images, labels = blocky_pair()
    aug = DeviceAugment(AugmentConfig(scale=(1.0, 1.0), hflip=0.0))
    out, lab = aug(images.to(device), labels.to(device))
    assert out.dtype == torch.float32 and lab.dtype == torch.int64
    torch.testing.assert_close(out, normalize(images.to(device)))
    assert torch.equal(lab.cpu(), labels)
    assert torch.equal(denormalize(out).cpu(), images)


def test_flip_is_exact_mirror():
    images, labels = blocky_pair()
    out, lab = DeviceAugment(AugmentConfig(scale=(1.0, 1.0), hflip=1.0))(images, labels)
    assert torch.equal(denormalize(out), images.flip(-1))
    assert torch.equal(lab, labels.flip(-1))


@pytest.mark.parametrize("device", DEVICES)
def test_padding_is_ignore_never_class_zero(device):
    images, labels = blocky_pair()
    # Half-size image in a full-size crop: the right and bottom halves are padding.
    cfg = AugmentConfig(scale=(0.5, 0.5), hflip=0.0, crop=(64, 48))
    out, lab = DeviceAugment(cfg)(images.to(device), labels.to(device))
    assert out.shape == (4, 3, 48, 64) and lab.shape == (4, 48, 64)
    assert not (lab == 0).any(), "padding must not become class 0"
    assert (lab[:, 24:, :] == 255).all() and (lab[:, :, 32:] == 255).all()
    assert (lab[:, :24, :32] != 255).all()
    assert (denormalize(out)[:, :, 25:, :] == 0).all()  # image padded with black
    # The label of the shrunken image is the nearest-neighbour subsample of the original.
    assert torch.equal(lab[:, :24, :32].cpu(), labels[:, ::2, ::2])


@pytest.mark.parametrize("device", DEVICES)
def test_random_scale_crop_flip_keeps_image_and_label_aligned(device):
    images, labels = blocky_pair(b=8)
    cfg = AugmentConfig(scale=(0.5, 2.0), crop=(40, 40), hflip=0.5)
    torch.manual_seed(3)
    out, lab = DeviceAugment(cfg)(images.to(device), labels.to(device))
    assert out.shape == (8, 3, 40, 40) and lab.shape == (8, 40, 40)
    assert set(lab.unique().tolist()) <= set(range(1, len(PALETTE))) | {255}
    valid = lab != 255
    agree = (nearest_palette_class(out) == lab)[valid].float().mean().item()
    assert agree > 0.97, f"image and label disagree on {1 - agree:.1%} of labelled pixels"
    # Padded pixels are black in the image wherever the label says ignore (up to bilinear edge blending).
    black = denormalize(out).amax(1) < 10
    assert black[~valid].float().mean().item() > 0.9


def test_crop_inside_upscaled_image_has_no_padding():
    images, labels = blocky_pair()
    out, lab = DeviceAugment(AugmentConfig(scale=(2.0, 2.0), crop=(32, 24), hflip=0.5))(images, labels)
    assert lab.shape == (4, 24, 32) and not (lab == 255).any()


def test_same_seed_same_output_and_params_differ_per_sample():
    images, labels = blocky_pair(b=6)
    images[:] = images[0]
    labels[:] = labels[0]
    aug = DeviceAugment(AugmentConfig(crop=(40, 32), color_jitter=ColorJitterConfig()))
    torch.manual_seed(7)
    a = aug(images, labels)
    torch.manual_seed(7)
    b = aug(images, labels)
    torch.manual_seed(8)
    c = aug(images, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert len({tuple(x.flatten()[:400].tolist()) for x in a[1]}) > 1, "samples of one batch share their parameters"


def test_color_jitter_changes_image_not_label():
    images, labels = blocky_pair()
    geo = dict(scale=(1.0, 1.0), hflip=0.0)
    torch.manual_seed(0)
    out, lab = DeviceAugment(AugmentConfig(**geo, color_jitter=ColorJitterConfig(p=1.0, hue=0.1)))(images, labels)
    assert torch.equal(lab, labels)
    assert (denormalize(out).float() - images.float()).abs().mean() > 2
    assert torch.isfinite(out).all()
    off, _ = DeviceAugment(AugmentConfig(**geo, color_jitter=ColorJitterConfig(p=0.0)))(images, labels)
    torch.testing.assert_close(off, normalize(images))


def test_unlabelled_batch_and_disabled_augment():
    images, labels = blocky_pair()
    out, lab = DeviceAugment(AugmentConfig(crop=(32, 32)))(images, None)
    assert lab is None and out.shape == (4, 3, 32, 32)
    out, lab = DeviceAugment(AugmentConfig(enabled=False, crop=(32, 32)))(images, labels.to(torch.uint8))
    torch.testing.assert_close(out, normalize(images))
    assert lab.dtype == torch.int64 and torch.equal(lab, labels)


def test_normalize_statistics_and_roundtrip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    assert torch.equal(denormalize(normalize(x)), x)
    mean_colour = torch.tensor([124, 116, 104], dtype=torch.uint8).view(1, 3, 1, 1)  # ImageNet mean x 255
    assert normalize(mean_colour).abs().max() < 0.01
    white = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    torch.testing.assert_close(white, torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_config_validation():
    with pytest.raises(ValidationError, match="scale"):
        AugmentConfig(scale=(2.0, 1.0))
    with pytest.raises(ValidationError, match="crop"):
        AugmentConfig(crop=(0, 10))
    with pytest.raises(ValidationError):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValidationError):
        AugmentConfig(rotate=10)
    assert AugmentConfig(color_jitter=True).color_jitter == ColorJitterConfig()
    assert AugmentConfig(color_jitter={}).color_jitter == ColorJitterConfig()
    assert AugmentConfig(color_jitter=False).color_jitter is None


# ------------------------------------------------------------------------------------------ strong pipeline
STRONG_ONLY_POLICY = dict(color_jitter=None, grayscale=0.0, blur=0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", None])
def test_strong_pipeline_keeps_padding_and_alignment(device, policy):
    images, labels = blocky_pair(b=6)
    geo = dict(scale=(0.5, 1.0), crop=(56, 40), hflip=0.5)
    torch.manual_seed(11)
    weak_out, weak_lab = DeviceAugment(AugmentConfig(**geo))(images.to(device), labels.to(device))
    torch.manual_seed(11)
    strong = DeviceAugment(AugmentConfig(**geo, pipeline="strong", strong=StrongConfig(policy=policy)))
    out, lab = strong(images.to(device), labels.to(device))
    # Same geometry draws -> the very same labels: 255 padding kept, never class 0, aligned with weak's image.
    assert torch.equal(lab, weak_lab) and (lab == 255).any() and not (lab == 0).any()
    assert out.shape == weak_out.shape == (6, 3, 40, 56) and torch.isfinite(out).all()
    assert (out - weak_out).abs().mean() > 0.05, "the photometric part changes the images"


def test_photometric_part_is_image_only_and_accepts_both_inputs():
    images, labels = blocky_pair()
    aug = DeviceAugment(AugmentConfig(strong=StrongConfig(policy="randaugment")))
    torch.manual_seed(2)
    from_uint8 = aug.photometric(images)
    torch.manual_seed(2)
    from_normalised = aug.photometric(normalize(images))
    assert from_uint8.shape == images.shape and from_uint8.dtype == torch.float32
    torch.testing.assert_close(from_normalised, from_uint8, atol=1e-4, rtol=0)
    assert (denormalize(from_uint8).float() - images.float()).abs().mean() > 2
    # In the strong pipeline it only changes pixel values: the image content stays where the label says.
    cfg = AugmentConfig(scale=(1.0, 1.0), hflip=0.0, pipeline="strong",
                        strong=StrongConfig(policy=None, color_jitter=None, grayscale=0.0, blur=1.0,
                                            blur_sigma=(0.5, 0.5)))
    out, lab = DeviceAugment(cfg)(images, labels)
    assert torch.equal(lab, labels)
    interior = torch.zeros_like(labels, dtype=torch.bool)  # pixels at least 2 away from a block edge
    interior[:, 2:-2, 2:-2] = True
    interior &= (torch.arange(48) % 8 >= 2).view(1, 48, 1) & (torch.arange(48) % 8 < 6).view(1, 48, 1)
    interior &= (torch.arange(64) % 8 >= 2).view(1, 1, 64) & (torch.arange(64) % 8 < 6).view(1, 1, 64)
    assert (nearest_palette_class(out) == labels)[interior].all()


def test_policies_hold_only_photometric_operations_and_vary_per_sample():
    from kornia.augmentation import IntensityAugmentationBase2D

    from dasuite.data.augment import photometric_policy

    for name in ("autoaugment", "randaugment"):
        ops = [m for m in photometric_policy(StrongConfig(policy=name)).modules() if hasattr(m, "op")]
        assert ops and all(isinstance(m.op, IntensityAugmentationBase2D) for m in ops)
    assert photometric_policy(StrongConfig(policy=None)) is None
    images, _ = blocky_pair(b=6)
    images[:] = images[0]
    aug = DeviceAugment(AugmentConfig(strong=StrongConfig(policy="randaugment", **STRONG_ONLY_POLICY)))
    torch.manual_seed(0)
    out = aug.photometric(images)
    assert len({tuple(x.flatten()[::97].tolist()) for x in out}) > 1, "every image draws its own operations"


def test_strong_grayscale_blur_and_reproducibility():
    images, labels = blocky_pair()
    grey = DeviceAugment(AugmentConfig(strong=StrongConfig(policy=None, color_jitter=None, grayscale=1.0, blur=0.0)))
    out = denormalize(grey.photometric(images)).float()
    assert (out.amax(1) - out.amin(1)).max() <= 1, "grayscale: equal channels"
    aug = DeviceAugment(AugmentConfig(crop=(40, 32), pipeline="strong"))
    torch.manual_seed(5)
    a = aug(images, labels)
    torch.manual_seed(5)
    b = aug(images, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    off, _ = DeviceAugment(AugmentConfig(enabled=False, pipeline="strong"))(images, labels)
    torch.testing.assert_close(off, normalize(images))


def test_strong_config_validation():
    with pytest.raises(ValidationError):
        AugmentConfig(pipeline="medium")
    with pytest.raises(ValidationError, match="blur_sigma"):
        StrongConfig(blur_sigma=(2.0, 1.0))
    with pytest.raises(ValidationError):
        StrongConfig(policy="trivialaugment")
    assert StrongConfig(color_jitter=True).color_jitter == StrongConfig().color_jitter
    assert StrongConfig().color_jitter.hue == 0.25 and AugmentConfig().pipeline == "weak"
