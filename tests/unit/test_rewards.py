import math

import pytest

from tagpr.errors import TagPRError
from tagpr.lamp.io import Prompt
from tagpr.rewards import REWARD_TERMS, CompositeReward, RewardContext, RewardInput, RewardTerm, calibrate, weighted
from tagpr.tags import TagSet

TAGGED = (
    "<examine_examples>Item 1: comedy.</examine_examples>\n<identify_patterns>Comedy recurs.</identify_patterns>\n"
    "<infer_preference>Likes comedy.</infer_preference>\n<compare_options>comedy over sci-fi</compare_options>\n"
    "<answer>{}</answer>"
)


def item(answer, gold="comedy", task="LaMP_2", response=None):
    return RewardInput(Prompt("q", task, "", (), gold), response or TAGGED.format(answer))


class LengthScorer:
    """A stand-in PRMU (the trained model is served elsewhere): raw score = response length / 100."""

    score_stats = (2.0, 0.5)

    def __init__(self):
        self.asked: list[int] = []

    def score(self, batch):
        self.asked.append(len(batch))
        return [float(len(j.item.response)) / 100 for j in batch]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_guided_stage_weights_all_terms_through_one_function(cfg):
    scorer = LengthScorer()
    reward = CompositeReward.for_stage(cfg, "guided", prmu=scorer)
    right, wrong_label = reward.score([item("comedy"), item("sci-fi")])
    raw = len(TAGGED.format("comedy")) / 100
    assert right.components["format"] == 1 and right.components["task"] == 1 and right.components["tag"] == 1
    assert right.components["prmu"] == pytest.approx(sigmoid((raw - 2.0) / 0.5))  # training-set statistics
    assert right.reward == pytest.approx(1.0 + 0.2 * 1.0 + 0.3 * sigmoid((raw - 2.0) / 0.5))
    assert right.reward == weighted(right.components, {"format_task": 1.0, "tag": 0.2, "prmu": 0.3})
    assert wrong_label.components["format"] == 1 and wrong_label.components["format_task"] == 0
    assert wrong_label.reward > 0  # well-formed and wrong still earns its tags and PRMU


def test_a_response_that_is_not_format_valid_earns_nothing_on_any_term(cfg):
    scorer = LengthScorer()
    reward = CompositeReward.for_stage(cfg, "guided", prmu=scorer)
    off_space, empty, unclosed, wrong = reward.score([
        item("a dog"), item("", response=" "), item("", response=TAGGED.format("comedy").removesuffix("</answer>")),
        item("sci-fi")])
    for res in (off_space, empty, unclosed):
        assert res.reward == 0.0 and res.components["tag"] == 0.0 and res.components["prmu"] == 0.0
        assert "prmu_raw" not in res.components
    assert wrong.reward > off_space.reward  # malformed text never out-earns a well-formed wrong answer
    assert scorer.asked == [1]  # the PRMU scores only what passes the gate


def test_weighted_names_missing_components():
    assert weighted({"format_task": 1.0, "tag": 0.5, "prmu": 0.25}, {"format_task": 1.0, "tag": 0.2}) == 1.1
    assert weighted({"format_task": 1.0}, {"format_task": 1.0, "prmu": 0.0}) == 1.0  # a zero weight needs nothing
    with pytest.raises(KeyError, match="prmu"):
        weighted({"format_task": 1.0}, {"format_task": 1.0, "prmu": 0.3})


def test_exploratory_stage_is_format_times_task_only(cfg):
    reward = CompositeReward.for_stage(cfg, "exploratory")
    bare, broken = reward.score([item("comedy", response="<answer>comedy</answer>"),
                                 item("comedy", response="<answer>comedy")])
    assert bare.reward == 1.0 and set(bare.components) == {"format_task", "format", "task"}
    assert broken.reward == 0.0 and broken.components["task"] == 0.0


def sections(*tags, answer="comedy", empty=()):
    return "\n".join(f"<{t}>{'' if t in empty else 'x'}</{t}>" for t in tags) + f"\n<answer>{answer}</answer>"


@pytest.mark.parametrize("response, expected", [
    ("<answer>comedy</answer>", 0.0),  # a bare answer: no reasoning, no tag reward
    (sections("examine_examples"), 0.25),
    (sections("examine_examples", "identify_patterns"), 0.5),
    (sections("examine_examples", "identify_patterns", "infer_preference", "compare_options"), 1.0),
    (sections("examine_examples", "analyze_query", "identify_patterns", "infer_preference", "compare_options",
              "verify"), 1.0),  # optional tags neither help nor hurt
    (sections("identify_patterns", "examine_examples", "infer_preference", "compare_options"), 0.5),  # 3 of 4 in
    # order, and one order violation
    (sections("examine_examples", "identify_patterns", "infer_preference", "compare_options", empty=("verify",)),
     1.0),
    (sections("examine_examples", "identify_patterns", "infer_preference", "compare_options", "verify",
              empty=("verify",)), 0.75),  # an empty section costs the penalty
])
def test_tag_reward_is_graded_by_required_tags_in_order_less_penalties(cfg, response, expected):
    reward = CompositeReward({"tag": 1.0}, RewardContext(TagSet(cfg.tags), cfg.reward))
    (res,) = reward.score([item("comedy", response=response)])
    assert res.reward == pytest.approx(expected)


def test_rating_and_generation_task_rewards(cfg):
    reward = CompositeReward.for_stage(cfg, "exploratory")
    three, = reward.score([item("3", gold="5", task="LaMP_3")])
    assert three.reward == pytest.approx(0.5)
    gen, = reward.score([item("city the to returns rain", gold="rain returns to the city", task="LaMP_4")])
    assert gen.components["task"] == pytest.approx(0.2)


def test_group_transform_standardises_within_the_gated_batch(cfg):
    cfg2 = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"prmu_transform": "group"})})
    reward = CompositeReward({"prmu": 1.0}, RewardContext(TagSet(cfg2.tags), cfg2.reward, LengthScorer()))
    res = reward.score([item("comedy"), item("based on a book"), item("comedy", response="not tagged"),
                        item("thought-provoking")])
    raw = [r.components["prmu_raw"] for r in res if "prmu_raw" in r.components]
    assert len(raw) == 3 and res[2].components["prmu"] == 0.0
    mean = sum(raw) / 3
    std = (sum((x - mean) ** 2 for x in raw) / 3) ** 0.5
    expected = [sigmoid((x - mean) / std) for x in raw]
    assert [r.components["prmu"] for r in res if "prmu_raw" in r.components] == pytest.approx(expected, abs=1e-5)


def test_calibrated_scores_are_graded_not_saturated():
    raw = [-20.0, -3.0, 0.0, 3.0, 20.0]
    plain = [sigmoid(x) for x in raw]
    calibrated = calibrate(raw, "calibrated", (0.0, 10.0))
    assert sum(0.05 < v < 0.95 for v in calibrated) == 5 and sum(0.05 < v < 0.95 for v in plain) == 1
    assert calibrated == sorted(calibrated)
    assert calibrate([1.0], "group", None) == [0.5]
    assert calibrate(raw, "calibrated", None) == calibrate(raw, "group", None)  # no statistics: within the batch


def test_prmu_weight_without_scorer_is_a_clear_error(cfg):
    with pytest.raises(TagPRError, match="no PRMU scorer"):
        CompositeReward.for_stage(cfg, "guided")
    with pytest.raises(TagPRError, match="unknown RL stage 'warmup'"):
        CompositeReward.for_stage(cfg, "warmup")


def test_unknown_term_lists_known_ones(cfg):
    with pytest.raises(TagPRError, match="unknown reward term 'lenght'.*format_task"):
        CompositeReward({"lenght": 1.0}, RewardContext(TagSet(cfg.tags), cfg.reward))


def test_a_new_term_plugs_in_by_name(cfg, monkeypatch):
    from tagpr.config import KNOWN_NAMES, load_config

    class Brevity(RewardTerm):
        name = "brevity_test"

        def score(self, batch):
            return [{self.name: 1.0 / len(j.item.response)} for j in batch]

    monkeypatch.setattr(REWARD_TERMS, "_items", dict(REWARD_TERMS._items))
    monkeypatch.setitem(KNOWN_NAMES, REWARD_TERMS.kind, set(KNOWN_NAMES[REWARD_TERMS.kind]))
    REWARD_TERMS.add("brevity_test", Brevity)
    assert load_config(None, ["rl.stages.0.weights.brevity_test=2"]).rl.stages[0].weights["brevity_test"] == 2
    reward = CompositeReward({"format_task": 1.0, "brevity_test": 2.0}, RewardContext(TagSet(cfg.tags), cfg.reward))
    (res,) = reward.score([item("comedy", response="<answer>comedy</answer>")])
    assert res.reward == pytest.approx(1.0 + 2.0 / len("<answer>comedy</answer>"))
