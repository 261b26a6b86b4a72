"""CutMix / ClassMix masks: shapes, box geometry, the chosen classes, and images and labels mixed alike."""

import math

import pytest
import torch

from dasuite.data.mix import classmix_masks, cutmix_masks, mix


def test_cutmix_boxes_respect_area_and_aspect():
    torch.manual_seed(0)
    masks = cutmix_masks(256, 60, 80, torch.device("cpu"), area=(0.1, 0.3), aspect=(0.5, 2.0))
    assert masks.shape == (256, 60, 80) and masks.dtype == torch.bool
    area = masks.float().mean(dim=(1, 2))
    assert area.min() > 0.08 and area.max() < 0.33  # rounding and clipping of the sides aside
    for m in masks[:32]:  # each mask is one solid rectangle
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert m.sum() == len(rows) * len(cols)
        assert len(rows) == rows[-1] - rows[0] + 1 and len(cols) == cols[-1] - cols[0] + 1
        assert 0.5 / 1.3 < len(cols) / len(rows) < 2.0 * 1.3


def test_cutmix_probability_zero_gives_empty_masks_and_is_seeded():
    assert not cutmix_masks(8, 16, 16, torch.device("cpu"), p=0.0).any()
    torch.manual_seed(3)
    a = cutmix_masks(4, 16, 16, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(a, cutmix_masks(4, 16, 16, torch.device("cpu")))


def test_classmix_pastes_exactly_half_of_each_images_classes():
    torch.manual_seed(0)
    labels = torch.randint(0, 7, (16, 12, 12))
    labels[:, 0] = 255
    labels[3] = torch.where(labels[3] < 4, labels[3], torch.full_like(labels[3], 255))  # classes 0..3 only
    masks = classmix_masks(labels, num_classes=19)
    for label, mask in zip(labels, masks):
        present = set(label[label != 255].unique().tolist())
        pasted = set(label[mask].unique().tolist())
        assert pasted <= present and len(pasted) == math.ceil(len(present) / 2)
        # whole classes: every pixel of a chosen class is pasted, none of the others, never an ignore pixel
        assert torch.equal(mask, torch.isin(label, torch.tensor(sorted(pasted))) & (label != 255))
    assert len({tuple(sorted(set(l[m].unique().tolist()))) for l, m in zip(labels, masks)}) > 1  # per image draws


def test_classmix_with_one_class_or_none():
    labels = torch.full((2, 4, 4), 255)
    labels[0, :2] = 5
    masks = classmix_masks(labels, 19)
    assert torch.equal(masks[0], labels[0] == 5) and not masks[1].any()


@pytest.mark.parametrize("kind", ["cutmix", "classmix"])
def test_mix_takes_every_pixel_from_exactly_one_image_and_labels_follow(kind):
    torch.manual_seed(1)
    b, h, w = 4, 16, 20
    src_img, tgt_img = torch.full((b, 3, h, w), 1.0), torch.full((b, 3, h, w), -1.0)
    src_lab = torch.randint(0, 5, (b, h, w))
    tgt_lab = torch.randint(10, 15, (b, h, w))
    mask = cutmix_masks(b, h, w, torch.device("cpu")) if kind == "cutmix" else classmix_masks(src_lab, 19)
    images, labels = mix(mask, src_img, tgt_img), mix(mask, src_lab, tgt_lab)
    assert images.shape == (b, 3, h, w) and labels.shape == (b, h, w)
    from_source = images == 1.0
    assert (from_source | (images == -1.0)).all()  # one image or the other, never a blend
    assert torch.equal(from_source, mask.unsqueeze(1).expand_as(images))
    assert torch.equal(labels < 10, mask)  # the label comes from the image the pixel came from
    assert torch.equal(labels[mask], src_lab[mask]) and torch.equal(labels[~mask], tgt_lab[~mask])
    assert 0 < mask.float().mean() < 1
