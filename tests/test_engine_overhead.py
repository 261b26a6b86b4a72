"""What keeps the engine's overhead low (docs/benchmarks.md, "Engine overhead (user's view)"): ``seg_loss`` is
``F.cross_entropy`` with the all-ignore case made 0, the CPU heap is not trimmed every step, unused augmentation
does not import Kornia, and the command line ends without the interpreter's teardown but with its exit work."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from dasuite.data.augment import AugmentConfig, DeviceAugment, normalize
from dasuite.engine.loop import keep_cpu_heap
from dasuite.losses.segmentation import seg_loss

from tests.conftest import ROOT


def _logits_labels(channels_last: bool = False):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 8)
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (2, 24, 32))
    labels[0, :7] = 255
    return logits.requires_grad_(True), labels


@pytest.mark.parametrize("channels_last", [False, True])
def test_seg_loss_is_cross_entropy_over_labelled_pixels(channels_last):
    logits, labels = _logits_labels(channels_last)
    ours = seg_loss(logits, labels)
    (grad,) = torch.autograd.grad(ours, logits)
    up = F.interpolate(logits, size=(24, 32), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(up, labels, ignore_index=255)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, atol=1e-6) and torch.allclose(grad, ref_grad, atol=1e-7)


def test_seg_loss_all_ignored_is_zero_with_zero_gradient():
    logits, labels = _logits_labels()
    loss = seg_loss(logits, torch.full_like(labels, 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_seg_loss_class_weights_divide_by_the_weights_of_labelled_pixels():
    logits, labels = _logits_labels()
    weights = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5])
    up = F.interpolate(logits, size=(24, 32), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(up, labels, weight=weights, ignore_index=255)  # sum / summed weights of labelled pixels
    assert torch.allclose(seg_loss(logits, labels, class_weights=weights), ref, atol=1e-6)
    only_zero_weight = torch.zeros_like(labels)  # every labelled pixel has weight 0: 0, not NaN
    loss = seg_loss(logits, only_zero_weight, class_weights=torch.tensor([0.0, 1, 1, 1, 1]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_normalisation_statistics_are_made_once_per_device():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    from dasuite.data import augment

    first = augment._stats(images)
    assert augment._stats(images.float())[0] is first[0]  # no new host-to-device copy per batch
    assert torch.allclose(normalize(images), (images / 255.0 - first[0]) / first[1])


def test_augmentation_off_does_not_import_kornia():
    code = textwrap.dedent("""
        import sys, torch
        from dasuite.data.augment import AugmentConfig, DeviceAugment
        aug = DeviceAugment(AugmentConfig(enabled=False))
        aug(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.long))
        print(any(name == "kornia" or name.startswith("kornia.") for name in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_strong_policy_is_built_on_first_use():
    aug = DeviceAugment(AugmentConfig(pipeline="strong"))
    assert aug._policy is None
    out = aug.photometric(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert aug._policy is not None and out.shape == (2, 3, 16, 16)


def test_keep_cpu_heap_only_on_the_cpu_and_not_over_the_users_settings(monkeypatch):
    assert not keep_cpu_heap(torch.device("cuda"))
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert not keep_cpu_heap(torch.device("cpu"))
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    import platform

    if platform.libc_ver()[0] == "glibc" and "LD_PRELOAD" not in __import__("os").environ:
        assert keep_cpu_heap(torch.device("cpu"))


@pytest.mark.parametrize("argv, code", [(["list", "methods"], 0), (["run", "missing.yaml"], 2)])
def test_command_line_exit_runs_atexit_handlers_and_keeps_the_exit_code(tmp_path, argv, code):
    marker = tmp_path / "atexit.txt"
    script = textwrap.dedent(f"""
        import atexit, sys
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        sys.argv = ["dasuite", *{argv!r}]
        from dasuite.cli import main
        main()
        print("not reached")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == code, out.stderr
    assert marker.read_text() == "ran" and "not reached" not in out.stdout
    if code == 0:
        assert "source_only" in out.stdout
    else:
        assert "missing.yaml" in out.stderr
