"""Config: defaults, JSON overrides, validation messages, fingerprints."""
import json

import pytest

from wbia_lightglue import core
from wbia_lightglue.core import ConfigError, load_config
from wbia_lightglue.engine import config as engine_config


@pytest.fixture
def no_default_file(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "config.json")


def write(path, values):
    path.write_text(json.dumps(values))
    return path


def test_defaults_when_default_file_is_missing(no_default_file):
    config = load_config()
    assert config["model_name"] == "aliked-n16"
    assert config["max_num_keypoints"] == 2048
    assert config["detection_threshold"] == 0.0
    assert config["depth_confidence"] == 0.95
    assert config["width_confidence"] == 0.99
    assert config["filter_threshold"] == 0.1
    assert config["image_size"] == 512
    assert config["feature_cache_max_size"] == 10000
    assert config["score"] == "confidence_sum"
    assert config.source is None


def test_default_file_is_read_when_present(tmp_path, monkeypatch):
    path = write(tmp_path / "config.json", {"max_num_keypoints": 1024})
    monkeypatch.setattr(engine_config, "DEFAULT_CONFIG_PATH", path)
    config = load_config()
    assert config["max_num_keypoints"] == 1024
    assert config.source == str(path)


def test_file_overrides_only_the_keys_it_names(tmp_path):
    config = load_config(write(tmp_path / "c.json", {"image_size": 640, "depth_confidence": -1}))
    assert config["image_size"] == 640
    assert config["depth_confidence"] == -1
    assert config["width_confidence"] == 0.99


def test_config_is_read_only(no_default_file):
    config = load_config()
    with pytest.raises(TypeError):
        config["image_size"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.image_size = 1
    assert config.replace(image_size=256)["image_size"] == 256
    assert config["image_size"] == 512


def test_missing_requested_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")


@pytest.mark.parametrize("values, needles", [
    ({"max_keypoints": 5}, ["unknown key 'max_keypoints'", "max_num_keypoints"]),
    ({"max_num_keypoints": "many"}, ["'max_num_keypoints'", "integer", "'many'"]),
    ({"max_num_keypoints": 2.5}, ["'max_num_keypoints'", "integer", "2.5"]),
    ({"max_num_keypoints": True}, ["'max_num_keypoints'", "integer"]),
    ({"max_num_keypoints": 0}, ["'max_num_keypoints'", "value 0", "1..16384"]),
    ({"depth_confidence": 1.5}, ["'depth_confidence'", "1.5"]),
    ({"width_confidence": 0}, ["'width_confidence'", "value 0"]),
    ({"filter_threshold": -0.1}, ["'filter_threshold'", "-0.1"]),
    ({"model_name": "superpoint"}, ["'model_name'", "'superpoint'", "aliked-n16"]),
    ({"image_size": 10}, ["'image_size'", "value 10"]),
    ({"feature_cache_max_size": -1}, ["'feature_cache_max_size'", "-1"]),
    ({"score": "magic"}, ["'score'", "'magic'", "confidence_sum"]),
    ({"screen_layer": 9}, ["'screen_layer'", "value 9", "0 (off) .. 8"]),
    ({"screen_score": -1}, ["'screen_score'", "-1"]),
])
def test_invalid_values_name_file_key_and_value(tmp_path, values, needles):
    path = write(tmp_path / "bad.json", values)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "image_size": 512,\n  "max_num_keypoints": ,\n}\n')
    with pytest.raises(ConfigError, match=r"broken\.json is not valid JSON: line 3"):
        load_config(path)


def test_non_object_json_is_rejected(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(path)


def test_same_contents_share_fingerprints_and_edits_change_them(tmp_path):
    a = load_config(write(tmp_path / "a.json", {"max_num_keypoints": 1024}))
    b = load_config(write(tmp_path / "b.json", {"max_num_keypoints": 1024}))
    assert a.feature_fingerprint == b.feature_fingerprint
    assert a.match_fingerprint == b.match_fingerprint
    edited = load_config(write(tmp_path / "a.json", {"max_num_keypoints": 512}))
    assert edited.feature_fingerprint != a.feature_fingerprint


def test_match_settings_do_not_change_feature_fingerprint(no_default_file):
    base = load_config()
    other = base.replace(depth_confidence=-1, filter_threshold=0.2)
    assert other.feature_fingerprint == base.feature_fingerprint
    assert other.match_fingerprint != base.match_fingerprint
    screened = base.replace(screen_score=base["screen_score"] + 1)
    assert screened.match_fingerprint != base.match_fingerprint
    # 1 and 1.0 are the same JSON number
    assert base.replace(depth_confidence=1).match_fingerprint == base.replace(depth_confidence=1.0).match_fingerprint


def test_cuda_request_without_cuda_is_a_clear_error(no_default_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        core.resolve_device(load_config(device="cuda"))
