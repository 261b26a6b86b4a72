"""Pretrained files are declared by the model modules (``PRETRAINED_FILES``, read from their source without importing
them): the lookups give what the single table of ``dasuite/models/weight_files.py`` gave before, every built-in
declaration resolves, a plugin model's declaration is found, and run planning stays torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dasuite.errors import ConfigError
from dasuite.models.weight_files import (
    FILES, declaration, keyword_files, missing_keyword_file, missing_weights_message, pretrained_files,
    read_declaration, recommended, select,
)
from dasuite.registry import MODELS
from tests.conftest import ROOT

HEAVY = ("torch", "torchvision", "transformers", "kornia", "accelerate")
KEYWORDS = ("imagenet", "coco", "dinov2", "cityscapes")
TV_R50 = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")
CAFFE_R101 = {"coco": ("DeepLab_resnet_pretrained_init-f81d91e8.pth", "MS_DeepLab_resnet_pretrained_COCO_init.pth"),
              "imagenet": ("DeepLab_resnet_pretrained_imagenet.pth",)}
#: (arch, options, recommended keyword, its file, keyword -> names), as weight_files.py's table gave them
BEFORE = [
    ("segformer_b2", None, "imagenet", "mit_b2.pth", {"imagenet": ("mit_b2.pth",)}),
    ("deeplabv3plus_r50", None, "imagenet", TV_R50[0], {"imagenet": TV_R50}),
    ("deeplabv3plus_mobilenetv2", None, "imagenet", "mobilenet_v2-b0353104.pth", {
        "imagenet": ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")}),
    ("deeplabv3_r101", None, "imagenet", "resnet101-imagenet.pth", {
        "imagenet": ("resnet101-imagenet.pth",), "cityscapes": ("deeplabv3_resnet101_citys_best_model.pth",)}),
    ("deeplabv3_mobilenetv2", None, "imagenet", "mobilenetv2-imagenet.pth", {"imagenet": (
        "mobilenetv2-imagenet.pth", "mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")}),
    ("dinov2_vitl14", None, "dinov2", "dinov2_vitl14_pretrain.pth", {
        "dinov2": ("dinov2_vitl14_pretrain.pth", "dinov2-large")}),
    ("deeplabv2_r50", {"resnet_style": "torchvision"}, "imagenet", TV_R50[0], {"imagenet": TV_R50}),
    ("deeplabv2_r101", {"resnet_style": "caffe"}, "coco", CAFFE_R101["coco"][0], CAFFE_R101),
    ("deeplabv2_r50", {"resnet_style": "caffe"}, None, None, {}),
    ("hrda", None, "imagenet", "mit_b5.pth", {"imagenet": ("mit_b5.pth",)}),
    ("hrda", {"base": "deeplabv2_r101", "base_options": {"resnet_style": "caffe"}}, "coco", CAFFE_R101["coco"][0],
     CAFFE_R101),
    ("hrda", {"base": "dinov2_vits14"}, "dinov2", "dinov2_vits14_pretrain.pth", {
        "dinov2": ("dinov2_vits14_pretrain.pth", "dinov2-small")}),
]


@pytest.mark.parametrize(("arch", "options", "keyword", "file", "table"), BEFORE)
def test_lookups_give_what_the_single_table_gave(arch, options, keyword, file, table) -> None:
    found = recommended(arch, options)
    assert (found and (found[0], found[1].name)) == ((keyword, file) if keyword else None)
    assert pretrained_files(arch, options) == table
    for word in KEYWORDS:
        assert keyword_files(arch, options, word) == table.get(word)


def test_messages_are_unchanged(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    assert missing_keyword_file("exp", "deeplabv3_mobilenetv2", {}, "imagenet") == (
        f"experiment 'exp': model.pretrained=imagenet needs mobilenetv2-imagenet.pth (or mobilenet_v2-b0353104.pth, "
        f"mobilenet_v2-7ebf99e0.pth) in {hub}/: get it (MobileNetV2 (CSAIL naming), ImageNet: CIRKD's student "
        f"backbone; https://drive.google.com/file/d/12EDZjDSCuIpxPv-dkk1vrxA7ka0b0Yjv/view (CIRKD v1 README, "
        f"github.com/winycg/CIRKD commit 91735ef)) and put it there, or pass model.pretrained=/path/to/"
        f"mobilenetv2-imagenet.pth (docs/models.md, Pretrained weights); to train from scratch on purpose set "
        f"model.pretrained=null model.from_scratch=true")
    caffe = {"base": "deeplabv2_r101", "base_options": {"resnet_style": "caffe"}}
    assert missing_weights_message("exp", "hrda", caffe) == (
        f"experiment 'exp': model.pretrained is not set, so hrda would start from random weights on real data: get "
        f"DeepLab_resnet_pretrained_init-f81d91e8.pth (caffe DeepLab ResNet-101, ImageNet + MS-COCO (AdaptSegNet's "
        f"and DACS's init; RESTORE_FROM of AdaptSegNet's train_gta2cityscapes_multi.py); http://vllab.ucmerced.edu/"
        f"ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth), put it in {hub}/ and pass "
        f"model.pretrained=coco, or pass model.pretrained=/path/to/DeepLab_resnet_pretrained_init-f81d91e8.pth "
        f"(docs/models.md, Pretrained weights); to train from scratch on purpose set model.from_scratch=true (and "
        f"--init-from CHECKPOINT starts from a trained run's weights)")
    assert FILES["resnet101-cd907fc2.pth"].sha256 == "cd907fc2" and FILES["resnet101-cd907fc2.pth"].size_mb == 170.53


def test_every_builtin_declaration_resolves() -> None:
    """Each arch a module declares is one it registers; every file name has a record (snapshot folders aside);
    every built-in arch has a recommended file."""
    for name in MODELS.names():
        module = MODELS.entry(name).module
        declared = declaration(module)
        tables = [declared.get("archs", {})] + [t for values in declared.get("options", {}).values()
                                                for t in values.values()]
        assert name in declared.get("wraps", {}) or name in declared.get("archs", {}), name
        assert set().union(*tables) <= {n for n in MODELS.names() if MODELS.entry(n).module == module}
        for table in tables:
            for keywords in table.values():
                for names in keywords.values():
                    assert names and names[0] in FILES
                    assert all(n in FILES for n in names if "." in n), names
        assert recommended(name) is not None, name


def test_option_tables_and_malformed_declarations() -> None:
    declared = {"archs": {"x": {"imagenet": ("a.pth",)}},
                "options": {"style": {"caffe": {"x": {"coco": ("b.pth",)}}}}}
    assert select(declared, "x") == select(declared, "x", {"style": "other"}) == {"imagenet": ("a.pth",)}
    assert select(declared, "x", {"style": "caffe"}) == {"coco": ("b.pth",)}
    assert select(declared, "x", {"style": ["unhashable"]}) == {"imagenet": ("a.pth",)}
    assert select(declared, "y") == {} and select({}, "x") == {}
    assert read_declaration("PRETRAINED_FILES: dict = {'archs': {}}\n") == {"archs": {}}
    assert read_declaration("import torch\nX = 1\n") == {}
    with pytest.raises(ConfigError, match="demo.py: PRETRAINED_FILES must be a literal"):
        read_declaration("PRETRAINED_FILES = dict(archs={})\n", "demo.py")


PLUGIN = '''
"""demo_net: a plugin model that declares its pretrained files."""
import torch  # run planning reads PRETRAINED_FILES without importing this module

from dasuite.models import MODELS

PRETRAINED_FILES = {
    "files": [{"name": "demo-net-in1k.pth", "what": "DemoNet, ImageNet-1k", "sha256": "0123abcd",
               "source": "https://example.org/demo-net-in1k.pth"}],
    "archs": {"demo_net_s": {"imagenet": ("demo-net-in1k.pth", "demo-net-in1k-v2.pth"),
                             "coco": ("demo-net-coco.pth",)}},
    "options": {"flavour": {"coco_only": {"demo_net_s": {"coco": ("demo-net-coco.pth",)}}}},
}


@MODELS.register("demo_net_s")
def build(arch, num_classes, *, tiny=False, pretrained=None, flavour="plain"):
    """Options:
        flavour: which weights fit
    """
    raise NotImplementedError
'''

BARE = '''
"""demo_bare: a plugin model that declares no pretrained file."""
import torch

from dasuite.models import MODELS


@MODELS.register("demo_bare")
def build(arch, num_classes, *, tiny=False, pretrained=None):
    raise NotImplementedError
'''

PROBE = """
import json, sys
from dasuite.models.weight_files import missing_keyword_file, missing_weights_message, pretrained_files, recommended
keyword, file = recommended("demo_net_s")
print(json.dumps({
    "files": pretrained_files("demo_net_s"), "recommended": [keyword, file.name, file.what, file.source, file.sha256],
    "coco_only": pretrained_files("demo_net_s", {"flavour": "coco_only"}),
    "hrda": [recommended("hrda", {"base": "demo_net_s"})[1].name, pretrained_files("hrda", {"base": "demo_net_s"})],
    "bare": [pretrained_files("demo_bare"), recommended("demo_bare"), missing_weights_message("exp", "demo_bare")],
    "message": missing_weights_message("exp", "demo_net_s"),
    "coco": missing_keyword_file("exp", "demo_net_s", {}, "coco"),
    "heavy": sorted(m for m in %r if m in sys.modules),
}))
""" % (HEAVY,)


def test_a_plugin_model_declares_its_files_the_same_way(tmp_path) -> None:
    site = tmp_path / "site"
    (site / "demo_weights_plugin").mkdir(parents=True)
    (site / "demo_weights_plugin" / "__init__.py").write_text("")
    (site / "demo_weights_plugin" / "net.py").write_text(textwrap.dedent(PLUGIN))
    (site / "demo_weights_plugin" / "bare.py").write_text(textwrap.dedent(BARE))
    info = site / "demo_weights_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-weights-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dasuite.models]\ndemo_net_s = demo_weights_plugin.net\n"
                                           "demo_bare = demo_weights_plugin.bare\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "TORCH_HOME": str(tmp_path / "th")}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["files"] == {"imagenet": ["demo-net-in1k.pth", "demo-net-in1k-v2.pth"], "coco": ["demo-net-coco.pth"]}
    assert out["recommended"] == ["imagenet", "demo-net-in1k.pth", "DemoNet, ImageNet-1k",
                                  "https://example.org/demo-net-in1k.pth", "0123abcd"]
    assert out["coco_only"] == {"coco": ["demo-net-coco.pth"]}
    assert out["hrda"] == ["demo-net-in1k.pth", out["files"]]
    assert out["bare"][:2] == [{}, None]
    assert "demo_bare would start from random weights on real data: pass model.pretrained=/path/to/weights" in (
        out["bare"][2])
    assert "get demo-net-in1k.pth (DemoNet, ImageNet-1k; https://example.org/demo-net-in1k.pth)" in out["message"]
    # a name without a record is still named
    assert "model.pretrained=coco needs demo-net-coco.pth in " in out["coco"]


def test_run_planning_stays_torch_free(tmp_path) -> None:
    code = """
import json, sys
from dasuite.config import load_config
from dasuite.engine.runs import missing_weights
lines = [missing_weights(load_config(path, overrides)) for path, overrides in %r]
print(json.dumps({"lines": lines, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % ([("experiments/camvid/segformer_b0.yaml", ["model.pretrained=null"]),
        ("experiments/gta5_to_cityscapes/hrda.yaml", []),
        ("experiments/gta5_to_cityscapes/minent.yaml", ["model.pretrained=null"]),
        ("experiments/cityscapes/unimatch_v2_dinov2_b_1of8.yaml", []),
        ("experiments/cityscapes/deeplabv3_mobilenetv2.yaml", [])], HEAVY)
    env = {**os.environ, "TORCH_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    segformer, hrda, minent, dinov2, deeplabv3 = out["lines"]
    assert "get mit_b0.pth" in segformer and "model.pretrained=imagenet needs mit_b5.pth" in hrda
    assert "get DeepLab_resnet_pretrained_init-f81d91e8.pth" in minent and "pass model.pretrained=coco" in minent
    assert "needs dinov2_vitb14_pretrain.pth (or dinov2-base)" in dinov2
    assert "needs mobilenetv2-imagenet.pth (or mobilenet_v2-b0353104.pth, mobilenet_v2-7ebf99e0.pth)" in deeplabv3
