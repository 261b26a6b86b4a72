"""Pretrained weights: the table of files (names, sources, SHA-256 prefixes) agrees with the model modules and with
torchvision, and a full-size run on real data without weights stops before training with one line naming the file,
unless the experiment opts out with ``model.from_scratch: true``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dasuite.cli import main
from dasuite.config import load_config
from dasuite.engine.runs import PlannedRun, check_initial_weights, missing_weights
from dasuite.errors import ConfigError, DasuiteError
from dasuite.models.weight_files import FILES, hub_checkpoint_dir, keyword_files, pretrained_files, recommended
from tests.conftest import ROOT

EXPERIMENTS = ROOT / "experiments"
CAMVID_B0 = EXPERIMENTS / "camvid" / "segformer_b0.yaml"


def test_table_agrees_with_the_model_modules_and_torchvision() -> None:
    import torchvision.models as tvm

    from dasuite.models import deeplabv2, deeplabv3, deeplabv3plus, dinov2, segformer

    for module in (deeplabv2, deeplabv3, deeplabv3plus, dinov2, segformer):  # the loaders' own declarations
        for arch, keywords in module.PRETRAINED_FILES["archs"].items():
            assert pretrained_files(arch, {}) == keywords
    for keyword, names in deeplabv2.PRETRAINED_FILES["options"]["resnet_style"]["caffe"]["deeplabv2_r101"].items():
        assert keyword_files("deeplabv2_r101", {"resnet_style": "caffe"}, keyword) == names
    assert keyword_files("deeplabv2_r50", {"resnet_style": "caffe"}, "imagenet") is None
    for v in ("b0", "b1", "b2", "b3", "b4", "b5"):
        assert keyword_files(f"segformer_{v}", {}, "imagenet") == (f"mit_{v}.pth",)
    # every torchvision file in the table is a torchvision ImageNet weight: same URL, size, hash prefix
    published = {}
    for enum in (tvm.ResNet50_Weights, tvm.ResNet101_Weights, tvm.MobileNet_V2_Weights):
        for w in enum:
            published[w.url.rsplit("/", 1)[1]] = w
    torchvision_files = [f for f in FILES.values() if f.source.startswith("https://download.pytorch.org/models/")]
    assert len(torchvision_files) == 6
    for f in torchvision_files:
        w = published[f.name]
        assert f.source == w.url and f.size_mb == w.meta["_file_size"]
        assert re.fullmatch(r"[0-9a-f]{8}", f.sha256) and f.name.endswith(f"-{f.sha256}.pth") and not f.full_sha256
    for arch in ("segformer_b0", "deeplabv3plus_r101", "deeplabv2_r101"):
        keyword, file = recommended(arch)
        assert file.name in keyword_files(arch, {}, keyword)
    assert recommended("deeplabv2_r101", {"resnet_style": "caffe"})[1].name == "DeepLab_resnet_pretrained_init-f81d91e8.pth"


def test_the_docs_table_lists_every_file() -> None:
    text = (ROOT / "docs" / "models.md").read_text()
    for f in FILES.values():
        assert f"`{f.name}`" in text, f.name
        if f.sha256:
            assert f.sha256 in text


def test_hub_dir_matches_torch(monkeypatch, tmp_path) -> None:
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert hub_checkpoint_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_every_shipped_full_size_experiment_has_weights_or_says_why(monkeypatch, tmp_path) -> None:
    """With every keyword file present, only the pseudo-label fine-tuning file (weights from --init-from) stops."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True)
    for name in FILES:
        (hub / name).write_bytes(b"")
    stopped = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml")
                     if missing_weights(load_config(p)))
    assert stopped == ["cityscapes/pseudo_label_finetune.yaml"]
    cfg = load_config(EXPERIMENTS / "cityscapes" / "pseudo_label_finetune.yaml", (),
                      {"train.init_from": "runs/cutmix_pseudo/seed0/checkpoints/best.safetensors"})
    assert missing_weights(cfg) is None


def test_a_full_size_real_data_run_without_weights_stops_with_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("DASUITE_DATA", str(tmp_path / "no_data"))  # the check comes before any data is read
    res = CliRunner().invoke(main, ["run", str(CAMVID_B0), "model.pretrained=null", f"work_dir={tmp_path}"])
    assert res.exit_code == 1
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("Error: experiment 'camvid_segformer_b0': model.pretrained is not set")
    assert "get mit_b0.pth" in line and f"put it in {tmp_path / 'hub' / 'checkpoints'}/" in line
    assert "model.from_scratch=true" in line
    # the shipped file asks for the ImageNet keyword: without the file in the hub cache, the same kind of line
    res = CliRunner().invoke(main, ["run", str(CAMVID_B0), f"work_dir={tmp_path}"])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
    assert f"model.pretrained=imagenet needs mit_b0.pth in {tmp_path / 'hub' / 'checkpoints'}/" in res.stderr
    # DeepLabV3+: the torchvision file and its URL
    line = missing_weights(load_config(EXPERIMENTS / "cityscapes" / "deeplabv3plus_r101.yaml", ["model.pretrained=null"]))
    assert "get resnet101-63fe2227.pth" in line and "https://download.pytorch.org/models/resnet101-63fe2227.pth" in line
    # HRDA loads its base's file (MiT-B5), named before any data is read
    line = missing_weights(load_config(EXPERIMENTS / "gta5_to_cityscapes" / "hrda.yaml"))
    assert line is not None and "model.pretrained=imagenet needs mit_b5.pth" in line


def test_opt_outs(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    scratch = load_config(CAMVID_B0, ["model.pretrained=null", "model.from_scratch=true"])
    assert missing_weights(scratch) is None
    assert missing_weights(load_config(CAMVID_B0, ["model.pretrained=null", "model.tiny=true"])) is None
    assert missing_weights(load_config(CAMVID_B0, ["model.pretrained=null"], {"train.init_from": "x.pt"})) is None
    toy = load_config(EXPERIMENTS / "toy" / "source_only.yaml", ["model.tiny=false"])
    assert missing_weights(toy) is None  # the toy data: nothing to get
    cyclegan = load_config(EXPERIMENTS / "gta5_to_cityscapes" / "cyclegan_gta2city.yaml")
    assert missing_weights(cyclegan) is None  # trains no segmenter
    mix = load_config(EXPERIMENTS / "gta5_to_cityscapes" / "source_only_gta_citys.yaml", ["model.pretrained=null"])
    assert "deeplabv2_r101" in missing_weights(mix)
    with pytest.raises(ConfigError, match="from_scratch: true contradicts pretrained: imagenet"):
        load_config(CAMVID_B0, ["model.from_scratch=true"])
    # --resume continues from last.pt: no check; a baseline that already ran is reused: no check
    plan = PlannedRun(load_config(CAMVID_B0, ["model.pretrained=null", f"work_dir={tmp_path}"]))
    with pytest.raises(DasuiteError, match="model.pretrained is not set"):
        check_initial_weights([plan])
    check_initial_weights([plan], resume=True)
    base = load_config(CAMVID_B0, ["model.pretrained=null", f"work_dir={tmp_path}"])
    with pytest.raises(DasuiteError, match="model.pretrained is not set"):
        check_initial_weights([PlannedRun(scratch, base)])
    finished = tmp_path / base.name / base.run_tag()
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    check_initial_weights([PlannedRun(scratch, base)])
