import dataclasses
import json

import pytest

from funclens.config import (ConfigError, DataCfg, DistillCfg, ModelCfg, PruneCfg, QuantCfg, RunSpec, StudyCfg,
                             TrainCfg, canonical_json, from_dict, load_study_toml, preset_study, to_dict)


def spec(**train) -> RunSpec:
    return RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(**train))


def test_run_id_is_kind_and_12_hex_of_sha256_of_nondefault_json():
    import hashlib

    s = spec(epochs=3)
    assert canonical_json(s) == json.dumps({"data": {}, "kind": "train", "model": {}, "train": {"epochs": 3}},
                                           sort_keys=True, separators=(",", ":"))
    assert s.run_id == "train_" + hashlib.sha256(canonical_json(s).encode()).hexdigest()[:12]


def test_ids_differ_by_config_and_not_by_spelling_of_defaults():
    assert spec(epochs=3).run_id != spec(epochs=4).run_id
    assert spec(epochs=3, seed=0).run_id == spec(epochs=3).run_id  # a default does not enter the hash
    assert spec(epochs=3, seed=1).run_id != spec(epochs=3).run_id


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec().train.epochs = 5  # type: ignore[misc]


@pytest.mark.parametrize("make", [
    lambda: TrainCfg(epochs=0), lambda: TrainCfg(lr=-1), lambda: DataCfg("imagenet"), lambda: ModelCfg("vgg"),
    lambda: QuantCfg("3-bit"), lambda: PruneCfg(amount=1.0), lambda: PruneCfg(amount=0.5, scope="row"),
    lambda: DistillCfg(teacher="quant_x"), lambda: DistillCfg(teacher="train_x", alpha=1.5),
    lambda: StudyCfg(seeds=(0,)), lambda: QuantCfg("8-bit", group_size=32),
])
def test_invalid_values_are_refused_on_construction(make):
    with pytest.raises(ConfigError):
        make()


def test_round_trip_through_json_keeps_the_id():
    d = RunSpec("quant", DataCfg("mnist"), ModelCfg("lenet"), parent="train_abc", compress=QuantCfg("4-bit", 32))
    back = from_dict(RunSpec, json.loads(json.dumps(to_dict(d))))
    assert back == d and back.run_id == d.run_id


def test_study_toml_overrides_a_preset(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('preset = "paper-mnist"\nquantize = ["8-bit", "4-bit"]\n[train]\nepochs = 2\n')
    s = load_study_toml(p)
    assert s.data.dataset == "mnist" and s.train.epochs == 2 and s.train.batch_size == 64
    assert s.quantize == ("8-bit", "4-bit")


def test_study_toml_rejects_unknown_fields(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("[train]\nepoch = 2\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_study_toml(p)


def test_paper_presets_have_the_papers_settings():
    s = preset_study("paper-cifar10", "resnet50")
    assert (s.train.epochs, s.train.batch_size, s.seeds) == (25, 64, (0, 1, 2))
    assert s.distill.alphas == (0.1, 0.5, 0.9) and s.distill.seeds == (2, 24, 42) and s.distill.temperature == 3
    assert s.quantize == ("16-bit", "8-bit") and s.prune == (0.1, 0.3, 0.5, 0.7, 0.9)
