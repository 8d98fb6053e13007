"""Switches typed on the bundle's command line: ``false`` as well as ``False`` turns them off."""

from __future__ import annotations

import pytest
from fire import parser as fire_parser
from monai.bundle import ConfigParser

from conftest import BUNDLE
from vacseg_monai.options import parse_bool


def _config(name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / f"{name}.json"))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


def _progress_handler_index(parser: ConfigParser) -> int:
    handlers = parser.get("train#handlers")
    return next(i for i, h in enumerate(handlers) if h.get("_target_") == "ignite.handlers.ProgressBar")


@pytest.mark.parametrize("typed", ["false", "False", "off", "0"])
def test_progress_bar_off_as_typed_on_the_command_line(typed):
    value = fire_parser.DefaultParseValue(typed)  # what `monai.bundle run --progress_bar <typed>` hands the config
    inference = _config("inference", progress_bar=value, amp=value)
    inferer = inference.get_parsed_content("inferer")
    assert inferer.progress is False
    assert inferer.amp is False
    train = _config("train", progress_bar=value)
    assert train.get_parsed_content(f"train#handlers#{_progress_handler_index(train)}") is None  # disabled


def test_progress_bar_on_by_default_and_as_typed():
    train = _config("train")
    bar = train.get_parsed_content(f"train#handlers#{_progress_handler_index(train)}")
    assert type(bar).__name__ == "ProgressBar"
    assert _config("inference", progress_bar=fire_parser.DefaultParseValue("true")).get_parsed_content(
        "inferer").progress is True


def test_a_misspelt_switch_names_the_option():
    with pytest.raises(ValueError, match=r"`progress_bar` expects a boolean such as true or false, got 'flase'"):
        parse_bool("flase", "progress_bar")
    assert parse_bool("No") is False and parse_bool(" YES ") is True
