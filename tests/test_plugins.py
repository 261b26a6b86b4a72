"""Third-party components: a package that declares entry points in the groups ``dasuite.methods``,
``dasuite.models``, ``dasuite.datasets`` and ``dasuite.distill_terms`` is found by ``dasuite list`` and trained with by ``dasuite run``, with
no change to dasuite (the package is "installed" by putting it and its ``.dist-info`` on ``PYTHONPATH``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

METHOD = '''
"""demo_weighted_ce: cross-entropy times a weight (a plugin method)."""
from typing import Literal

from pydantic import Field

from dasuite.lazy import lazy_import
from dasuite.methods import METHODS, LossTerm, Method
from dasuite.schema_base import Section

losses = lazy_import("dasuite.losses")


class WeightedCEConfig(Section):
    name: Literal["demo_weighted_ce"] = "demo_weighted_ce"
    weight: float = Field(2.0, ge=0)


@METHODS.register("demo_weighted_ce", config=WeightedCEConfig)
class WeightedCE(Method):
    """Source cross-entropy times ``weight``."""

    loss_terms = (LossTerm("ce", "weight", on=2.0),)

    def training_step(self, batches, step):
        batch = batches["source"]
        loss = self.cfg.method.weight * losses.seg_loss(self.model(batch["image"]), batch["label"])
        return {"loss": loss, "loss_seg": loss.detach()}
'''

MODEL = '''
"""demo_convnet: two convolutions at stride 4 (a plugin model)."""
from torch import nn

from dasuite.models import MODELS
from dasuite.models.base import SegModel


class ConvNet(SegModel):
    output_stride = 4
    head_prefixes = ("head.",)

    def __init__(self, num_classes, width):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=4, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)
        self.feature_channels = {"decoder": width}

    def forward(self, images, return_features=False):
        features = self.body(images)
        logits = self.head(features)
        return (logits, {"decoder": features}) if return_features else logits


@MODELS.register("demo_convnet")
def build(arch, num_classes, *, tiny=False, pretrained=None, width=8):
    """Options:
        width: channels of the hidden layer
    """
    return ConvNet(num_classes, width)
'''

DATASET = '''
"""demo_toy: the toy scenes under another name (a plugin dataset)."""
from typing import Literal

from dasuite.data import DATASETS
from dasuite.data.toy import ToyConfig, ToyDataset


class DemoToyConfig(ToyConfig):
    name: Literal["demo_toy"] = "demo_toy"


@DATASETS.register("demo_toy", config=DemoToyConfig)
class DemoToy(ToyDataset):
    """Toy scenes."""
'''

TERM = '''
"""demo_l2: mean squared difference of the logits (a plugin distillation term of ``distill``)."""
from pydantic import Field

from dasuite.methods.kd_terms import DISTILL_TERMS, DistillTerm, FeaturePair
from dasuite.schema_base import Section


class DemoL2Config(Section):
    weight: float = Field(1.0, ge=0)
    """Weight of the term."""


@DISTILL_TERMS.register("demo_l2")
class DemoL2(DistillTerm):
    """Mean squared difference of the logits."""

    config = DemoL2Config

    def pairs(self):
        return [FeaturePair(student="logits", teacher="logits")]

    def pair_loss(self, s, t, batch, log):
        return (s.float() - t).pow(2).mean()
'''


@pytest.fixture
def plugin(tmp_path) -> dict[str, str]:
    """A tiny installed plugin package (sources + dist-info with entry points); the environment that sees it."""
    site = tmp_path / "site"
    package = site / "dasuite_demo_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, text in (("method", METHOD), ("model", MODEL), ("dataset", DATASET), ("term", TERM)):
        (package / f"{name}.py").write_text(textwrap.dedent(text))
    info = site / "dasuite_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dasuite-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[dasuite.methods]\ndemo_weighted_ce = dasuite_demo_plugin.method\n\n"
        "[dasuite.models]\ndemo_convnet = dasuite_demo_plugin.model\n\n"
        "[dasuite.datasets]\ndemo_toy = dasuite_demo_plugin.dataset\n\n"
        "[dasuite.distill_terms]\ndemo_l2 = dasuite_demo_plugin.term\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return env


def _dasuite(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dasuite", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_plugin_components_are_listed(plugin):
    for kind, name in (("methods", "demo_weighted_ce"), ("models", "demo_convnet"), ("datasets", "demo_toy")):
        out = _dasuite(plugin, "list", kind)
        assert out.returncode == 0, out.stderr
        line = next(l for l in out.stdout.splitlines() if l.startswith(name))
        assert "plugin dasuite-demo-plugin" in line


def test_dasuite_run_trains_with_a_plugin_method_model_and_dataset(plugin, tmp_path):
    out = _dasuite(
        plugin, "run", str(ROOT / "experiments" / "toy" / "source_only.yaml"), f"work_dir={tmp_path / 'runs'}",
        "method.name=demo_weighted_ce", "method.weight=3.0", "model.arch=demo_convnet", "model.options.width=4",
        "data.source.name=demo_toy", "data.source.size=[48,32]", "data.source.num_images=8",
        "data.source.augment.crop=[32,32]", "data.val={name: demo_toy, domain: real, split: val, size: [48,32], "
        "num_images: 2}", "data.test=null", "train.max_iters=2", "train.batch_size=2", "train.eval_interval=2",
        "data.num_workers=0", "log.progress_bar=false")
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "runs" / "toy_source_only" / "seed0" / "summary.json").read_text())
    assert summary["best"]["iteration"] == 2 and summary["best"]["num_images"] == 2
    config = (tmp_path / "runs" / "toy_source_only" / "seed0" / "config.yaml").read_text()
    assert "demo_weighted_ce" in config and "demo_convnet" in config and "weight: 3.0" in config


def test_dasuite_run_distils_with_a_plugin_term(plugin, tmp_path):
    """``method.demo_l2`` exists because the plugin registers the term: no change to distill."""
    from safetensors.torch import save_file

    from dasuite.models import create_model

    teacher = tmp_path / "teacher.safetensors"
    save_file(create_model("segformer_b2", 19, tiny=True).state_dict(), str(teacher))
    out = _dasuite(
        plugin, "run", str(ROOT / "experiments" / "kd" / "toy_b2_to_b0.yaml"), f"work_dir={tmp_path / 'runs'}",
        f"method.teacher={{checkpoint: {teacher}, arch: segformer_b2, tiny: true}}", "method.kl=null",
        "method.freq=null", "method.demo_l2={weight: 0.5}", "data.source.size=[48,32]", "data.source.num_images=4",
        "data.source.augment.crop=[32,32]", "data.val=null", "data.test=null", "train.max_iters=2",
        "train.batch_size=2", "data.num_workers=0", "log.progress_bar=false", "log.tensorboard=false")
    assert out.returncode == 0, out.stdout + out.stderr
    config = (tmp_path / "runs" / "kd_toy_b2_to_b0" / "seed0" / "config.yaml").read_text()
    assert "demo_l2:" in config and "weight: 0.5" in config


def test_plugin_config_errors_name_the_key(plugin):
    out = _dasuite(plugin, "run", str(ROOT / "experiments" / "toy" / "source_only.yaml"),
                   "method.name=demo_weighted_ce", "method.wieght=3")
    assert out.returncode == 2 and "method.wieght: unknown key; did you mean 'method.weight'" in out.stderr


def test_plugin_name_clashing_with_a_builtin_is_an_error(plugin, tmp_path):
    info = Path(plugin["PYTHONPATH"].split(os.pathsep)[0]) / "dasuite_demo_plugin-0.1.dist-info"
    (info / "entry_points.txt").write_text("[dasuite.methods]\nsource_only = dasuite_demo_plugin.method\n")
    out = _dasuite(plugin, "list", "methods")
    assert out.returncode == 2 and "'source_only' is registered twice" in out.stderr
