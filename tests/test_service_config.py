from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from vacseg_monai.service.config import Destination, NodeConfig, OutputKind, build_argument_parser, parse_node_args
from test_service_support import REPO


def test_defaults():
    config, ns = parse_node_args([])
    assert (config.port, config.ae_title, config.bind_address) == (11112, "VACSEG", "127.0.0.1")
    assert str(config.output_directory) == "vacseg_node"
    assert (config.bundle / "configs" / "inference.json").is_file()  # found whatever the current folder
    assert config.bundle.name == "vacbag_ct_segmentation"
    assert config.output is OutputKind.RTSTRUCT and config.export_series is False
    assert config.destination is None and not ns.status


def test_dcmtk_names_and_original_aliases_agree():
    new, _ = parse_node_args(["4242", "-aet", "NODE", "-ba", "0.0.0.0", "-od", "out", "--destination",
                              "10.0.0.5:104:TPS", "--export-series", "-ta", "5", "-td", "6", "-tn", "7", "-q"])
    old, _ = parse_node_args(["--scp_port", "4242", "--ae-title", "NODE", "--scp_ip", "0.0.0.0", "--storage_path",
                              "out", "--scu_ip", "10.0.0.5", "--scu_port", "104", "--export_series", "True"])
    assert new.port == old.port == 4242
    assert new.bind_address == old.bind_address == "0.0.0.0"
    assert new.output_directory == old.output_directory
    assert new.destination == Destination("10.0.0.5", 104, "TPS")
    assert old.destination == Destination("10.0.0.5", 104, "ANY-SCP")
    assert new.export_series is old.export_series is True
    assert (new.acse_timeout, new.dimse_timeout, new.network_timeout, new.log_level) == (5, 6, 7, "WARNING")
    off, _ = parse_node_args(["--export_series", "False", "--allowed-aet", "A", "--allowed-aet", "B"])
    assert off.export_series is False and off.allowed_aet == ["A", "B"]


def test_toml_file_with_command_line_override(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        'port = 5000\nae-title = "FILEAET"\ndestination = "127.0.0.1:104"\nallowed_aet = ["CT1"]\n'
        'series-timeout = 2.5\noutput = "both"\nexport_series = "True"\n[processor_args]\nthreshold = 3\n'
    )
    config, _ = parse_node_args(["--config", str(path), "-aet", "CLIAET"])
    assert config.port == 5000 and config.ae_title == "CLIAET" and config.allowed_aet == ["CT1"]
    assert config.series_timeout == 2.5 and config.output is OutputKind.BOTH and config.export_series
    assert config.processor_args == {"threshold": 3} and config.destination == Destination("127.0.0.1", 104)
    path.write_text("prot = 5000\n")
    with pytest.raises(SystemExit):
        parse_node_args(["--config", str(path)])


def test_invalid_values_say_what_was_wrong(capsys):
    for args, message in [
        (["--destination", "hostonly"], "HOST:PORT[:AET]"),
        (["--scu_ip", "1.2.3.4"], "--scu_ip and --scu_port must be given together"),
        (["70000"], "must be in [0, 65535]"),
        (["--export_series", "maybe"], "Expected a boolean"),
        (["--tls-cert", "c.pem"], "must be given together"),
        (["--root-uid", "1.2/3"], "not a valid UID root"),
        (["1000", "--port", "1001"], "Conflicting ports"),
        (["--worker-nice", "20"], "`worker_nice` must be an integer in [0, 19], got 20"),
    ]:
        with pytest.raises(SystemExit):
            parse_node_args(args)
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="`min_free_mb` must be >= 0"):
        NodeConfig(min_free_mb=-1)


def test_every_option_has_help():
    parser = build_argument_parser()
    groups = {g.title for g in parser._action_groups}
    assert {"Network", "Output", "Processing", "TLS"} <= groups
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    text = subprocess.run([sys.executable, str(REPO / "scripts" / "serve_scp.py"), "--help"],
                          capture_output=True, text=True, timeout=60).stdout
    for option in ["--scp_port", "-aet", "-ba", "-od", "--bundle", "--destination", "--output", "--export_series",
                   "--root-uid", "--allowed-aet", "--allowed-host", "--tls-cert", "--tls-key", "--tls-ca",
                   "--series-timeout", "-ta", "-td", "-tn", "--min-free-mb", "--config", "--status"]:
        assert option in text, option


def test_default_bundle_is_found_from_another_folder(tmp_path, monkeypatch):
    """A physicist may start the node from anywhere: the repository's bundle is found beside the package."""
    monkeypatch.chdir(tmp_path)
    config, _ = parse_node_args([])
    assert (config.bundle / "models" / "model.pt").is_file()
    assert config.bundle == REPO / "bundles" / "vacbag_ct_segmentation"
