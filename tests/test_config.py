import argparse

import pytest

from pipeline.config import (
    PipelineConfig,
    add_config_flags,
    config_from_args,
    config_from_dict,
)


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(argv))


def test_paper_defaults():
    config = PipelineConfig()
    assert (config.target_pairs, config.test_pairs, config.subdatasets) == (14329, 300, 7)
    assert config.motion.samples == 2000 and config.motion.psf_max_size == 64
    assert parse([]) == config


def test_preset_then_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("test_pairs: 10\nseed: 4\nmotion:\n  exposures: [0.5, 1.0]\nphantom:\n  slices: 3\n")
    config = parse(["--preset", "tiny", "--config", str(path), "--seed", "9", "--motion_length_px_max", "20"])
    assert config.test_pairs == 10 and config.seed == 9 and config.target_pairs == 24
    assert config.motion.exposures == (0.5, 1.0) and config.motion.length_px_max == 20.0
    assert config.phantom.slices == 3 and config.phantom.size == 96


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown setting 'target_pair'"):
        config_from_dict({"target_pair": 3})
    with pytest.raises(ValueError, match="kernels_per_slice"):
        config_from_dict({"kernels_per_slice": 2, "target_pairs": 5, "test_pairs": 2})
    with pytest.raises(ValueError, match="exposures"):
        config_from_dict({"motion": {"exposures": [0.0]}})
