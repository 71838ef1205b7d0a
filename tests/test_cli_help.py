"""What `sdfn train --help` shows a user to type must work: every override example is a real config key."""

from __future__ import annotations

import re

import pytest

from sdfn.cli import main
from sdfn.config import load_config


def train_help(capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_every_override_shown_in_train_help_is_accepted(capsys):
    text = " ".join(train_help(capsys).split())  # argparse wraps the epilog anywhere
    examples = re.findall(r"(?<![\w-])([a-z_]+(?:\.[a-z_]+)+)=(\S+)", text)
    assert len(examples) >= 3, text
    for key, value in examples:
        cfg = load_config("tiny-synthetic", [f"{key}={value}"])  # an unknown key raises ConfigError
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert str(node).lower() == value.lower(), f"{key}={value} shown in the help set {key} to {node!r}"
