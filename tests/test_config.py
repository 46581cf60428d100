import dataclasses
import json

import pytest

from funclens.config import (NAME_RE, PRESET_ARCHS, ConfigError, DataCfg, DistillCfg, ModelCfg, PruneCfg, QuantCfg,
                             RunSpec, StudyCfg, TrainCfg, canonical_json, from_dict, load_study_toml, preset_study,
                             to_dict)


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
    lambda: TrainCfg(epochs=0), lambda: TrainCfg(lr=-1), lambda: DataCfg("imagenet"), lambda: ModelCfg("vgg 16"),
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
    # the paper's five amounts, pruned under one global threshold as the fit search read the paper
    assert s.quantize == ("16-bit", "8-bit") and s.prune_global == (0.1, 0.3, 0.5, 0.7, 0.9) and s.prune == ()


def study_file(tmp_path, text: str):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, needle", [
    ("[distill]\nalphas = [0.5, 0.5]\n", "alphas lists 0.5 twice"),
    ("[distill]\nseeds = [2, 2]\n", "seeds lists 2 twice"),
    ("seeds = [0, 1, 1]\n", "seeds lists 1 twice"),
    ('quantize = ["8-bit", "8-bit"]\n', "quantize lists 8-bit twice"),
    ("prune = [0.5, 0.3, 0.5]\n", "prune lists 50% twice"),
    ("prune_global = [0.7, 0.70000000001]\n", "prune_global lists 70% twice"),  # one label, one report row
])
def test_a_grid_naming_one_setting_twice_is_refused(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        load_study_toml(study_file(tmp_path, text))


@pytest.mark.parametrize("name", ["/tmp/x", "../../x", "a/b", ".hidden", "", "a" * 65, "x y", "..", "naïve"])
def test_a_study_name_is_a_slug(name):
    with pytest.raises(ConfigError, match="name must be"):
        StudyCfg(name=name)


def test_preset_names_are_slugs():
    for preset, archs in PRESET_ARCHS.items():
        for arch in archs:
            assert NAME_RE.fullmatch(preset_study(preset, arch).name)


@pytest.mark.parametrize("text", [
    "[train]\nlr = inf\n", "[train]\nlr = nan\n", "[train]\nweight_decay = inf\n", "[train]\nmomentum = nan\n",
    "[distill]\ntemperature = inf\n", "[distill]\nalphas = [nan]\n", "prune = [nan]\n",
    "[train]\nlr = 1e400\n",
])
def test_inf_and_nan_are_refused_wherever_a_float_is_read(tmp_path, text):
    with pytest.raises(ConfigError, match="finite|in \\[0, 1\\]|in \\(0, 1\\)"):
        load_study_toml(study_file(tmp_path, text))


def test_infinite_values_are_refused_on_construction_too():
    for make in (lambda: TrainCfg(lr=float("inf")), lambda: TrainCfg(weight_decay=float("inf")),
                 lambda: DistillCfg(teacher="train_x", temperature=float("inf")),
                 lambda: PruneCfg(amount=float("nan"))):
        with pytest.raises(ConfigError):
            make()


@pytest.mark.parametrize("make, needle", [
    (lambda: TrainCfg(epochs=10**30), "epochs"), (lambda: TrainCfg(batch_size=10**12), "batch_size"),
    (lambda: StudyCfg(seeds=tuple(range(200_000))), "seeds lists 200000 entries"),
    (lambda: StudyCfg(prune=tuple(i / 2000 for i in range(1, 1001)), quantize=("8-bit",)), "runs, over the limit"),
    (lambda: DataCfg("digits", train_subset=2**40), "train_subset"), (lambda: TrainCfg(seed=2**64), "seed"),
    (lambda: QuantCfg("4-bit", group_size=10**9), "group_size"),
])
def test_counts_have_upper_bounds(make, needle):
    with pytest.raises(ConfigError, match=needle):
        make()


def test_a_preset_of_the_wrong_type_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="preset: expected a string"):
        load_study_toml(study_file(tmp_path, 'preset = ["a"]\n'))


def test_a_study_file_must_be_a_small_regular_file(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo")
    for p in (tmp_path / "fifo", tmp_path, "/dev/zero"):  # a FIFO would block, /dev/zero never end
        with pytest.raises(ConfigError, match="must be a regular file"):
            load_study_toml(p)
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 110_000)
    with pytest.raises(ConfigError, match="limit"):
        load_study_toml(big)
    (tmp_path / "bin.toml").write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_study_toml(tmp_path / "bin.toml")


def test_data_content_is_a_sha256_and_enters_the_run_id():
    with pytest.raises(ConfigError, match="content"):
        DataCfg("digits", content="abc")
    a = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=3))
    b = RunSpec("train", DataCfg("digits", content="0" * 64), ModelCfg("lenet"), TrainCfg(epochs=3))
    assert a.run_id != b.run_id and from_dict(RunSpec, json.loads(json.dumps(to_dict(b)))).run_id == b.run_id


def test_every_config_field_has_help():
    # the study-file reference in README.md is generated from this help: a field without it is undocumented
    import dataclasses

    from funclens import config

    classes = [c for c in vars(config).values() if dataclasses.is_dataclass(c) and c.__module__ == config.__name__]
    assert {"DataCfg", "ModelCfg", "TrainCfg", "StudyCfg", "DistillGrid", "RunSpec"} <= {c.__name__ for c in classes}
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"


def test_reference_names_every_study_file_key():
    import dataclasses

    from funclens.config import StudyCfg, reference_markdown

    ref = reference_markdown()
    for f in dataclasses.fields(StudyCfg):
        if dataclasses.is_dataclass(f.default):
            assert f"`[{f.name}]`" in ref
            for sub in dataclasses.fields(type(f.default)):
                assert f"| `{sub.name}` |" in ref, (f.name, sub.name)
        else:
            assert f"| `{f.name}` |" in ref, f.name
