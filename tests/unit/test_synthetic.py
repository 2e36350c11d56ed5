import json

import pytest

from tagpr.config import SyntheticConfig
from tagpr.lamp.io import load_split
from tagpr.lamp.synthetic import SETTINGS_FILE, baseline_report, stale_tasks, write_synthetic

ALL = [f"LaMP_{k}" for k in range(1, 8)]
# How much better the profile reader must do than the user-blind baseline on dev, per task.
MARGIN = {"LaMP_1": 0.3, "LaMP_2": 0.3, "LaMP_3": 0.4, "LaMP_4": 0.15, "LaMP_5": 0.1, "LaMP_6": 0.15, "LaMP_7": 0.1}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = SyntheticConfig(seed=3, users={"train": 40, "dev": 20}, questions_per_user=3, profile_size=8)
    counts = write_synthetic(root, cfg, ALL)
    return root, cfg, counts


def test_official_format_and_sizes(synth):
    root, _, counts = synth
    for task in ALL:
        assert counts[task] == {"train": 120, "dev": 60}
        dev = load_split(root, task, "dev")
        assert len(dev.questions) == 60 and all(len(q.profile) == 8 for q in dev.questions)
        assert all(dev.task.in_answer_space(g) for g in dev.golds.values())
        users = json.loads((root / task / "users.json").read_text())
        assert len(users) == 60 and {q.user_id for q in dev.questions} <= set(users)


def test_deterministic_by_seed(tmp_path, synth):
    root, cfg, _ = synth
    reference = (root / "LaMP_2" / "dev_questions.json").read_bytes()
    write_synthetic(tmp_path, cfg, ["LaMP_2"])
    assert (tmp_path / "LaMP_2" / "dev_questions.json").read_bytes() == reference
    write_synthetic(tmp_path, cfg.model_copy(update={"seed": 4}), ["LaMP_2"])
    assert (tmp_path / "LaMP_2" / "dev_questions.json").read_bytes() != reference


def test_data_written_with_other_settings_is_stale(tmp_path, synth):
    _, cfg, _ = synth
    write_synthetic(tmp_path, cfg, ["LaMP_2", "LaMP_3"])
    assert stale_tasks(tmp_path, cfg, ALL) == []
    more = cfg.model_copy(update={"users": {"train": 80, "dev": 20}})
    assert stale_tasks(tmp_path, more, ALL) == ["LaMP_2", "LaMP_3"]
    (tmp_path / "LaMP_3" / SETTINGS_FILE).unlink()  # written before settings were recorded
    assert stale_tasks(tmp_path, cfg, ALL) == ["LaMP_3"]
    (tmp_path / "LaMP_2" / "users.json").unlink()  # a user's own LaMP files: never rewritten
    assert stale_tasks(tmp_path, more, ALL) == ["LaMP_3"]


def test_train_and_dev_users_differ(synth):
    root, _, _ = synth
    train, dev = load_split(root, "LaMP_3", "train"), load_split(root, "LaMP_3", "dev")
    assert not {q.user_id for q in train.questions} & {q.user_id for q in dev.questions}


def test_rl_prompts_come_from_their_own_users(tmp_path, synth):
    """An ``rl`` split adds users SFT never sees and leaves train and dev as they were; RL draws its
    prompts from it when ``data.rl_split`` names it, from the train split otherwise."""
    from tagpr.config import ConfigError, load_config
    from tagpr.rl.data import load_prompts

    root, cfg, _ = synth
    write_synthetic(tmp_path, cfg.model_copy(update={"users": {**cfg.users, "rl": 10}}), ["LaMP_3"])
    for split in ("train", "dev"):
        assert (tmp_path / "LaMP_3" / f"{split}_questions.json").read_bytes() == \
            (root / "LaMP_3" / f"{split}_questions.json").read_bytes()
    base = [f"data.root={tmp_path}", "data.tasks=[LaMP_3]"]
    train_users = {q.user_id for q in load_split(tmp_path, "LaMP_3", "train").questions}
    assert {p.user_id for p in load_prompts(load_config(None, base)).values()} == train_users
    rl = load_prompts(load_config(None, [*base, "data.rl_split=rl"]))
    assert len(rl) == 30 and all(p.gold for p in rl.values())
    assert not {p.user_id for p in rl.values()} & train_users
    with pytest.raises(ConfigError, match="rl_split 'dev' is the dev split"):
        load_config(None, [*base, "data.rl_split=dev"])


@pytest.mark.parametrize("task", ALL)
def test_gold_depends_on_the_user_and_profile_reveals_it(synth, task):
    root, _, _ = synth
    train, dev = load_split(root, task, "train"), load_split(root, task, "dev")
    scores = baseline_report(task, train.questions, dev.questions)
    metric = dev.task.primary_metric
    reader, blind = scores["profile_reader"][metric], scores["user_blind"][metric]
    gain = reader - blind if dev.task.higher_is_better else blind - reader
    assert gain >= MARGIN[task], (task, reader, blind)
