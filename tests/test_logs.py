"""Tests of the process owners' logging set-up (vacseg_monai.logs)."""

from __future__ import annotations

import argparse
import logging

import pytest

from vacseg_monai.logs import THIRD_PARTY_LOGGERS, add_verbosity_options, setup_logging, setup_script_logging


@pytest.fixture
def restore_levels():
    names = [*THIRD_PARTY_LOGGERS, ""]
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_third_party_loggers_are_quiet_unless_asked_for(restore_levels, caplog):
    setup_logging("INFO")
    assert {logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS} == {logging.WARNING}
    with caplog.at_level(logging.INFO):
        logging.getLogger("highdicom.seg.sop").info("one line per SEG")
        logging.getLogger("pynetdicom.events").warning("a real problem")
        logging.getLogger("vacseg_monai.dicom.outputs").info("our own line")
    assert [r.getMessage() for r in caplog.records] == ["a real problem", "our own line"]

    setup_logging(logging.DEBUG, third_party=True)
    assert {logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS} == {logging.NOTSET}  # the root's
    setup_logging("ERROR")
    assert logging.getLogger("ignite").level == logging.ERROR  # never below the process's own level
    with pytest.raises(ValueError, match=r"Unknown logging level 'loud'"):
        setup_logging("loud")


def test_script_flags_set_the_level_and_refuse_both(restore_levels, capsys):
    parser = argparse.ArgumentParser()
    add_verbosity_options(parser, quiet_help="only warnings and errors, no progress bar")
    root_logger = logging.getLogger()
    saved_handlers = root_logger.handlers[:]
    for argv, root, third_party in (([], logging.INFO, logging.WARNING), (["-q"], logging.WARNING, logging.WARNING),
                                    (["-v"], logging.DEBUG, logging.NOTSET)):
        root_logger.handlers = []  # basicConfig only configures a root logger without handlers, as in a script
        setup_script_logging(parser.parse_args(argv))
        root_logger.handlers = saved_handlers
        assert logging.getLogger().level == root, argv
        assert {logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS} == {third_party}, argv
    with pytest.raises(SystemExit):
        parser.parse_args(["-q", "-v"])
    assert "not allowed with argument" in capsys.readouterr().err
