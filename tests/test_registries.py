"""Registries: one way to register a fusion module or a data set reader, and a taken name is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sdfn.data import base as data_base
from sdfn.errors import ConfigError
from sdfn.fusion import base as fusion_base
from sdfn.fusion.baselines import Combiner


def test_a_second_fusion_under_a_taken_name_is_refused_and_the_first_stays():
    with pytest.raises(ConfigError, match=r"fusion name 'combiner' is already registered by .*Combiner.*another name"):
        @fusion_base.register_fusion("combiner")
        class Impostor(Combiner):
            pass
    assert fusion_base._REGISTRY["combiner"] is Combiner


def test_a_second_reader_under_a_taken_name_is_refused_and_the_first_stays():
    from sdfn.data.shoes import ShoesDataset

    class Impostor(ShoesDataset):
        name = "shoes"

    with pytest.raises(ConfigError, match=r"data set name 'shoes' is already registered by .*ShoesDataset"):
        data_base.register_dataset(Impostor)
    assert data_base._READERS["shoes"] is ShoesDataset


def test_importing_any_data_module_registers_every_reader():
    """No hand-written list of reader modules: importing sdfn.data (which any sdfn.data.* import does) is enough."""
    code = "from sdfn.data.base import _READERS; print(','.join(sorted(_READERS)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "fashion200k,fashioniq,shoes"
    assert not hasattr(data_base, "_READER_MODULES")


def test_an_unknown_data_set_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown data set 'nope'; known data sets: fashion200k, fashioniq, shoes"):
        data_base.open_dataset("nope", tmp_path)
