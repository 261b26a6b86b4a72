"""Config: YAML loading, overrides, validation errors that name keys, values and suggestions."""

from pathlib import Path

import pytest
import yaml

from dasuite.config import dump_config, load_config, validate_config
from dasuite.config.load import parse_override
from dasuite.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "experiments" / "toy" / "source_only.yaml"


def test_toy_experiment_loads_with_defaults():
    cfg = load_config(TOY)
    assert cfg.name == "toy_source_only"
    assert cfg.data.source.name == "toy" and cfg.data.source.domain == "synthetic"
    assert cfg.method.name == "source_only"
    assert cfg.train.max_iters > 0 and cfg.optim.name == "adamw"


def test_overrides_parse_yaml_values():
    cfg = load_config(TOY, ["train.max_iters=7", "data.resize=[240,180]", "optim.lr=1e-3", "tag=abc",
                            "train.mixed_precision=null", "model.options.drop_path=0.0"])
    assert cfg.train.max_iters == 7
    assert cfg.data.resize == (240, 180)
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.tag == "abc" and cfg.run_tag() == "abc"
    assert cfg.model.options == {"drop_path": 0.0}
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_unknown_key_names_key_and_closest_valid_one():
    with pytest.raises(ConfigError) as err:
        load_config(TOY, ["train.max_iter=5"])
    msg = str(err.value)
    assert "train.max_iter" in msg and "did you mean 'train.max_iters'" in msg


def test_unknown_key_inside_dataset_entry():
    with pytest.raises(ConfigError) as err:
        load_config(TOY, ["data.source.spilt=val"])
    assert "data.source.spilt" in str(err.value) and "data.source.split" in str(err.value)


def test_wrong_type_names_key_value_and_expected_type():
    with pytest.raises(ConfigError) as err:
        load_config(TOY, ["train.batch_size=many"])
    msg = str(err.value)
    assert "train.batch_size" in msg and "'many'" in msg and "integer" in msg


def test_unknown_dataset_and_method_names_list_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config(TOY, ["data.source.name=camvd"])
    assert "camvid" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(TOY, ["method.name=sourceonly"])
    assert "source_only" in str(err.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(TOY, ["train.max_iters"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips():
    cfg = load_config(TOY, ["train.max_iters=9"])
    again = validate_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_fold_tag_and_milestones_validation():
    with pytest.raises(ConfigError, match="milestones"):
        load_config(TOY, ["schedule.name=step", "schedule.milestones=[100000]"])


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_experiment_validates(path):
    load_config(path)


def test_unknown_key_suggestions_in_optional_roles_and_mixes():
    with pytest.raises(ConfigError) as err:
        load_config(TOY, ["data.val.spilt=val"])
    assert "data.val.spilt" in str(err.value) and "did you mean 'data.val.split'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(TOY, ["data.source={mix: [{name: toy}, {name: toy, spilt: val}]}"])
    assert "data.source.mix.1.spilt" in str(err.value) and "data.source.mix.1.split" in str(err.value)
