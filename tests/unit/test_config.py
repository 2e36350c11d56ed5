import subprocess
import sys
import textwrap

import pytest

from tagpr.config import DEFAULT_CONFIG, RESOLVED_NAME, load_config, new_run_dir, write_resolved
from tagpr.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def minimal(tmp_path, extra=""):
    return write(tmp_path, f"tags: {DEFAULT_CONFIG.parent / 'tags.yaml'}\n" + textwrap.dedent(extra))


def test_default_config_loads_with_tag_set(cfg):
    assert [t.name for t in cfg.tags.primary][:2] == ["examine_examples", "identify_patterns"]
    assert len(cfg.tags.primary) == 9 and cfg.tags.answer == "answer"
    assert cfg.service.host == "127.0.0.1"
    assert [s.name for s in cfg.rl.stages] == ["guided", "exploratory"]
    assert cfg.rl.stages[0].weights == {"format_task": 1.0, "tag": 0.2, "prmu": 0.3}


def test_import_does_not_pull_heavy_libraries():
    code = (
        "import sys, tagpr.config, tagpr.tags, tagpr.errors\n"
        "tagpr.config.load_config()\n"
        "heavy = [m for m in ('torch', 'ray', 'vllm', 'transformers') if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_unknown_key_names_file_and_path(tmp_path):
    p = minimal(tmp_path, "rl:\n  group_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.source == str(p) and e.value.key == "rl.group_sise" and e.value.reason == "unknown key"


def test_wrong_type_and_out_of_range(tmp_path):
    p = minimal(tmp_path, "rl:\n  group_size: many\nservice:\n  port: 70000\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    keys = {k: r for _, k, r in e.value.issues}
    assert "valid integer" in keys["rl.group_size"] and "'many'" in keys["rl.group_size"]
    assert "less than or equal to 65535" in keys["service.port"]


def test_cross_field_rule(tmp_path):
    p = minimal(tmp_path, "model:\n  tiny:\n    hidden_size: 64\n    num_heads: 4\n")
    with pytest.raises(ConfigError, match="head size"):
        load_config(p)


def test_tag_set_consistency_checked(tmp_path):
    tags = write(tmp_path, "primary:\n  - {name: a, description: x}\nrequired:\n  always: [b]\n", "tags.yaml")
    p = write(tmp_path, f"tags: {tags.name}\n")
    with pytest.raises(ConfigError, match="'b' is not a primary tag"):
        load_config(p)


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "run: {name: x}\n"))
    assert e.value.key == "tags" and "missing" in e.value.reason


def test_yaml_syntax_error_has_line(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML at line 3, column 5: mapping values"):
        load_config(write(tmp_path, "rl:\n  group_size: 4\n   x: y\n"))


def test_missing_file_and_include(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(write(tmp_path, "tags: nope.yaml\n"))


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_overrides_reach_defaults_and_lists():
    overrides = ["rl.group_size=4", "rl.stages.1.steps=7", "service.host=0.0.0.0", "rl.stages.0.weights.prmu=0.5"]
    cfg = load_config(None, overrides)
    assert cfg.rl.group_size == 4 and cfg.rl.stages[1].steps == 7
    assert cfg.service.host == "0.0.0.0" and cfg.rl.stages[0].weights["prmu"] == 0.5


@pytest.mark.parametrize(
    "override, key, reason",
    [
        ("rl.group_size=1", "rl.group_size", "greater than or equal to 2"),
        ("rl.nope=1", "rl.nope", "unknown key"),
        ("rl.stages.9.steps=1", "rl.stages.9", "no list item"),
        ("justakey", "justakey", "KEY.PATH=VALUE"),
    ],
)
def test_bad_override_names_set(override, key, reason):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.source == "--set" and e.value.key == key and reason in e.value.reason


def test_on_and_off_are_words_though_yaml_reads_them_as_booleans(tmp_path):
    cfg = load_config(None, ["learner.shared_prefix=on", "cluster.cpu_layout=off"])
    assert cfg.learner.shared_prefix == "on" and cfg.cluster.cpu_layout == "off"
    assert load_config(minimal(tmp_path, "learner:\n  shared_prefix: off\n")).learner.shared_prefix == "off"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["cluster.cpu_layout=on"])  # not one of its words
    assert e.value.key == "cluster.cpu_layout" and "'auto' or 'off'" in e.value.reason


def test_a_learner_splits_its_steps_one_way():
    assert load_config(None, ["learner.max_tokens_per_micro_batch=4096"]).learner.max_tokens_per_micro_batch == 4096
    with pytest.raises(ConfigError) as e:
        load_config(None, ["learner.grad_accum=2", "learner.max_tokens_per_micro_batch=4096"])
    assert e.value.key == "learner" and "not both" in e.value.reason


def test_resolved_config_round_trips(tmp_path, cfg):
    cfg2 = load_config(None, ["run.root=" + str(tmp_path), "rl.group_size=3"])
    run_dir = new_run_dir(cfg2, "test")
    written = run_dir / RESOLVED_NAME
    assert written.exists() and run_dir.parent == tmp_path
    again = load_config(written)
    assert again == cfg2
    assert write_resolved(again, tmp_path / "x").read_text() == written.read_text()


def test_a_resumed_run_keeps_the_config_it_started_with(tmp_path):
    first = load_config(None, ["run.root=" + str(tmp_path), "rl.group_size=3"])
    run_dir = new_run_dir(first, "test")
    resumed = write_resolved(load_config(None, ["rl.group_size=5"]), run_dir, resumed=True)
    assert load_config(run_dir / RESOLVED_NAME) == first
    assert resumed.name.startswith("tagpr_config.resume-") and load_config(resumed).rl.group_size == 5


@pytest.mark.parametrize("name", ["default.yaml", "demo.yaml", "lamp-qwen3.yaml"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    cfg = load_config(str(Path(__file__).resolve().parents[2] / "configs" / name))
    assert cfg.run.steps


def test_every_training_section_takes_worker_resources():
    cfg = load_config(None, ["learner.resources={learner: 1}", "sft.resources={GPU: 0.5}"])
    assert cfg.learner.resources == {"learner": 1.0} and cfg.sft.resources == {"GPU": 0.5}
    with pytest.raises(ConfigError, match="prmu.resources: unknown key"):
        load_config(None, ["prmu.resources={GPU: 1}"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("rl.advantage=grpoo", "rl.advantage"),
        ("rl.loss=ppo", "rl.loss"),
        ("rl.stages.0.weights.prmuu=0.3", "rl.stages.0.weights.prmuu"),
        ("rollout.weight_transport=nccl", "rollout.weight_transport"),
        ("rollout.engine.kind=sglang", "rollout.engine.kind"),
        ("chains.teacher=gpt", "chains.teacher"),
        ("chains.labeler=regex", "chains.labeler"),
        ("data.tasks=[LaMP_8]", "data.tasks.0"),
    ],
)
def test_registered_names_are_checked_when_the_config_loads(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key, e.value


def test_the_names_a_config_accepts_are_the_registries():
    """The built-in name lists (kept import-light) equal what the registries hold."""
    import typing

    from actors.weights import TRANSPORTS
    from tagpr import config
    from tagpr.algos.advantages import ADVANTAGES
    from tagpr.algos.losses import LOSSES
    from tagpr.chains.labelers import LABELERS
    from tagpr.chains.teachers import TEACHERS
    from tagpr.engines.base import ENGINES
    from tagpr.lamp.tasks import TASKS
    from tagpr.rewards import REWARD_TERMS

    assert sorted(typing.get_args(config.TaskName)) == sorted(TASKS.names())
    registries = [REWARD_TERMS, ADVANTAGES, LOSSES, ENGINES, TRANSPORTS, TEACHERS, LABELERS]
    assert sorted(config.KNOWN_NAMES) == sorted(r.kind for r in registries)
    for registry in registries:
        assert config.KNOWN_NAMES[registry.kind] == set(registry.names()), registry.kind


def test_a_registered_plug_in_is_accepted_by_name(monkeypatch):
    from tagpr import config
    from tagpr.registry import Registry

    monkeypatch.setitem(config.KNOWN_NAMES, "policy loss", set(config.KNOWN_NAMES["policy loss"]))
    with pytest.raises(ConfigError, match="unknown policy loss 'mine'"):
        load_config(None, ["rl.loss=mine"])
    Registry("policy loss").add("mine", object())
    assert load_config(None, ["rl.loss=mine"]).rl.loss == "mine"


def test_policy_replicas_are_a_count_or_an_autoscaling_range():
    fixed = load_config(None, ["policy_service.min_replicas=2", "policy_service.max_replicas=2"]).policy_service
    assert fixed.replicas() == {"num_replicas": 2}
    scaled = load_config(None, ["policy_service.max_replicas=3"]).policy_service
    assert scaled.replicas() == {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3,
                                                        "target_ongoing_requests": 16}}
    with pytest.raises(ConfigError, match="max_replicas"):
        load_config(None, ["policy_service.min_replicas=3", "policy_service.max_replicas=2"])
