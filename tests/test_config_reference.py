"""docs/config.md's key reference is generated from the schema and the registries and cannot drift: the committed
page equals a fresh generation, and every key (every method's, dataset's and model option included) has a meaning."""

import importlib.util

from tests.conftest import ROOT


def test_config_reference_is_current_and_complete():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    generated, missing = tool.generate()
    assert not missing, f"keys without a meaning (a docstring under the field): {missing}"
    page = (ROOT / "docs" / "config.md").read_text()
    assert generated in page, "docs/config.md is out of date: run python tools/config_reference.py"
    for key in ("`entropy_weight`", "`adv_weight`", "`classifier_quirk`", "`labelled`", "`fold`", "`high_weight`"):
        assert key in generated
