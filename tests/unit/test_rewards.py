import math

import pytest

from tagpr.errors import TagPRError
from tagpr.rewards import REWARD_TERMS, CompositeReward, RewardContext, RewardInput, RewardTerm
from tagpr.tags import CONSTRAINTS, TagSet

TAGGED = (
    "<examine_examples>Item 1: comedy.</examine_examples>\n<identify_patterns>Comedy recurs.</identify_patterns>\n"
    "<infer_preference>Likes comedy.</infer_preference>\n<compare_options>comedy over sci-fi</compare_options>\n"
    "<answer>{}</answer>"
)


def item(answer, gold="comedy", task="LaMP_2", response=None):
    return RewardInput(task=task, response=response or TAGGED.format(answer), gold=gold)


class ConstantScorer:
    """A stand-in PRMU (the trained model is served elsewhere): raw score = response length."""

    def score(self, batch):
        return [float(len(j.item.response)) / 100 for j in batch]


def test_guided_stage_weights_all_terms(cfg):
    reward = CompositeReward.for_stage(cfg, "guided", prmu=ConstantScorer())
    right, wrong_label, off_space = reward.score([item("comedy"), item("sci-fi"), item("a dog")])
    raw = len(TAGGED.format("comedy")) / 100
    assert right.components["format"] == 1 and right.components["task"] == 1 and right.components["tag"] == 1
    assert right.reward == pytest.approx(1.0 + 0.2 * 1.0 + 0.3 / (1 + math.exp(-raw)))
    assert wrong_label.components["format"] == 1 and wrong_label.components["format_task"] == 0
    assert off_space.components["format"] == 0 and off_space.components["format_task"] == 0
    assert off_space.components["prmu_raw"] == pytest.approx(len(TAGGED.format("a dog")) / 100)


def test_exploratory_stage_is_format_times_task_only(cfg):
    reward = CompositeReward.for_stage(cfg, "exploratory")
    bare, broken = reward.score([item("comedy", response="<answer>comedy</answer>"),
                                 item("comedy", response="<answer>comedy")])
    assert bare.reward == 1.0 and set(bare.components) == {"format_task", "format", "task"}
    assert broken.reward == 0.0 and broken.components["task"] == 0.0


def test_tag_term_is_fraction_of_constraints(cfg):
    reward = CompositeReward({"tag": 1.0}, RewardContext(TagSet(cfg.tags), cfg.reward))
    (res,) = reward.score([item("x", response="<answer>comedy</answer>")])
    assert res.reward == pytest.approx(1 - 1 / len(CONSTRAINTS))  # only the required tags are missing


def test_rating_and_generation_task_rewards(cfg):
    reward = CompositeReward.for_stage(cfg, "exploratory")
    three, = reward.score([item("3", gold="5", task="LaMP_3")])
    assert three.reward == pytest.approx(0.5)
    gen, = reward.score([item("city the to returns rain", gold="rain returns to the city", task="LaMP_4")])
    assert gen.components["task"] == pytest.approx(0.2)


def test_group_sigmoid_normalizes_within_batch(cfg):
    cfg2 = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"prmu_transform": "group_sigmoid"})})
    reward = CompositeReward({"prmu": 1.0}, RewardContext(TagSet(cfg2.tags), cfg2.reward, ConstantScorer()))
    res = reward.score([item("a"), item("ab" * 20), item("abc" * 40)])
    raw = [r.components["prmu_raw"] for r in res]
    mean = sum(raw) / 3
    std = (sum((x - mean) ** 2 for x in raw) / 3) ** 0.5
    expected = [1 / (1 + math.exp(-(x - mean) / std)) for x in raw]
    assert [r.components["prmu"] for r in res] == pytest.approx(expected, abs=1e-5)


def test_prmu_weight_without_scorer_is_a_clear_error(cfg):
    with pytest.raises(TagPRError, match="no PRMU scorer"):
        CompositeReward.for_stage(cfg, "guided")
    with pytest.raises(TagPRError, match="unknown RL stage 'warmup'"):
        CompositeReward.for_stage(cfg, "warmup")


def test_unknown_term_lists_known_ones(cfg):
    with pytest.raises(TagPRError, match="unknown reward term 'lenght'.*format_task"):
        CompositeReward({"lenght": 1.0}, RewardContext(TagSet(cfg.tags), cfg.reward))


def test_a_new_term_plugs_in_by_name(cfg):
    class Brevity(RewardTerm):
        name = "brevity_test"

        def score(self, batch):
            return [{self.name: 1.0 / len(j.item.response)} for j in batch]

    REWARD_TERMS.add("brevity_test", Brevity)
    try:
        reward = CompositeReward({"format_task": 1.0, "brevity_test": 2.0}, RewardContext(TagSet(cfg.tags), cfg.reward))
        (res,) = reward.score([item("comedy", response="<answer>comedy</answer>")])
        assert res.reward == pytest.approx(1.0 + 2.0 / len("<answer>comedy</answer>"))
    finally:
        REWARD_TERMS._items.pop("brevity_test")
