"""PRMU model, pairs, training and checkpoints, without Ray (frozen packaged MiniLM encoder)."""

import math

import pytest
import torch

from tagpr.config import PRMUConfig, SyntheticConfig, load_config
from tagpr.errors import TagPRError
from tagpr.lamp.io import load_split
from tagpr.lamp.synthetic import write_synthetic
from tagpr.lamp.tasks import get_task
from tagpr.prmu import checkpoint
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.features import PRMUBatch, answer_text, make_example
from tagpr.prmu.model import UserPooling
from tagpr.prmu.pairs import pairs_for_tasks, pairs_from_samples, pairs_from_split
from tagpr.prmu.scorer import PRMUScorer
from tagpr.prmu.train import PairData, bt_loss, evaluate, fit
from tagpr.rewards import RewardInput, judge
from tagpr.tags import TagSet


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder("minilm", max_length=64)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lamp")
    write_synthetic(root, SyntheticConfig(seed=1, users={"train": 48, "dev": 12}, questions_per_user=3,
                                          profile_size=6), ["LaMP_1", "LaMP_2"])
    return root


def test_encoder_is_normalized_and_cached(encoder):
    a = encoder.encode(["a starship crew", "two lovers", "a starship crew"])
    assert a.shape == (3, 384) and torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(a[0], a[2]) and "two lovers" in encoder._cache
    assert encoder.encode([]).shape == (0, 384)


def test_user_pooling_ignores_padding_and_handles_empty_profiles():
    torch.manual_seed(0)
    pool = UserPooling(8, 4, num_users=3)
    items = torch.randn(2, 3, 16)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    b = PRMUBatch(items, mask, torch.randn(2, 8), torch.randn(2, 8), torch.tensor([-1, -1]))
    u = pool(b)
    b2 = PRMUBatch(items.clone(), mask, b.query, b.answer, b.user_idx)
    b2.items[0, 2] = 100.0  # a padded slot must not matter
    assert torch.allclose(pool(b2), u)
    assert torch.equal(u[1], torch.zeros(4))
    known = PRMUBatch(items, mask, b.query, b.answer, torch.tensor([2, -1]))
    assert torch.allclose(pool(known)[0], u[0] + pool.ids.weight[2]) and torch.equal(pool(known)[1], u[1])


def test_bt_loss_value():
    assert bt_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_lamp1_answer_is_the_reference_title():
    text = 'For an author ... [1]: "Graph bounds" [2]: "Robot arms"'
    assert answer_text(get_task("LaMP_1"), text, "[2]") == "Robot arms"
    assert answer_text(get_task("LaMP_1"), text, "[3]") == "[3]"
    ex = make_example("LaMP_2", [{"description": "d", "tag": "comedy"}], "x", "comedy", "u1")
    assert ex.profile == (("tag: comedy", "description: d"),) and ex.answer == "tag: comedy"


def test_pairs_reject_another_users_answer(data_root, encoder):
    split = load_split(data_root, "LaMP_2", "train")
    pairs = pairs_from_split(split, encoder, negatives=2)
    assert len(pairs) == 2 * len(split.questions)
    by_input = {q.input: q for q in split.questions}
    for p in pairs:
        assert p.chosen.answer == "tag: " + split.golds[by_input[p.chosen.input].id] != p.rejected.answer
        assert p.chosen.profile == p.rejected.profile and p.chosen.user_id == p.rejected.user_id
    ex = pairs[0].chosen
    assert pairs_from_samples([(ex, 0.1), (pairs[0].rejected, 0.9)])[0].chosen is pairs[0].rejected
    assert pairs_from_samples([(ex, 0.5), (ex, 0.55)]) == []


def test_training_beats_user_blind_on_held_out_users(data_root, encoder):
    torch.manual_seed(0)
    cfg = PRMUConfig(epochs=25, hidden_size=64)
    train_pairs, users = pairs_for_tasks(str(data_root), ["LaMP_1", "LaMP_2"], "train", encoder, 3)
    dev_pairs, dev_users = pairs_for_tasks(str(data_root), ["LaMP_1", "LaMP_2"], "dev", encoder, 3)
    assert not set(users) & set(dev_users)
    index = {u: i for i, u in enumerate(users)}
    net = checkpoint.build_net(cfg, encoder.dim, len(index))
    history = fit(net, PairData.build(net, train_pairs, encoder, index), cfg)
    assert history[-1]["loss"] < history[0]["loss"]
    scores = evaluate(net, dev_pairs, encoder, index)
    assert scores["prmu"]["all"] >= scores["user_blind"]["all"] + 0.15, scores


def test_checkpoint_round_trip(tmp_path, encoder):
    torch.manual_seed(0)
    cfg = PRMUConfig(hidden_size=32)
    net = checkpoint.build_net(cfg, encoder.dim, 2)
    version = checkpoint.save(net, tmp_path, cfg, "minilm", encoder.dim, {"u1": 0, "u2": 1}, {"note": 1})
    assert version.startswith("prmu-") and len(version.split("-")[-1]) == 8
    scorer = PRMUScorer.load(tmp_path)
    assert scorer.version == version and scorer.user_index == {"u1": 0, "u2": 1}
    examples = [make_example("LaMP_2", [{"description": "d", "tag": "comedy"}], "x", a, "u1") for a in ("a", "b")]
    with torch.no_grad():
        expected = net(net.featurize(examples, encoder, {"u1": 0, "u2": 1})).tolist()
    assert scorer.score_examples(examples) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(TagPRError, match="not a PRMU checkpoint"):
        checkpoint.load(tmp_path / "nope")


def test_scorer_reads_the_parsed_answer(tmp_path, encoder):
    cfg = PRMUConfig(hidden_size=16)
    checkpoint.save(checkpoint.build_net(cfg, encoder.dim, 0), tmp_path, cfg, "minilm", encoder.dim, {})
    scorer = PRMUScorer.load(tmp_path)
    tags = TagSet(load_config().tags)
    profile = ({"description": "d", "tag": "comedy"},)
    tagged = judge(tags, RewardInput("LaMP_2", "<summarize>x</summarize><answer>comedy</answer>", "", "q", profile))
    plain = judge(tags, RewardInput("LaMP_2", "comedy", "", "q", profile))
    a, b = scorer.score([tagged, plain])
    assert a == pytest.approx(b, abs=1e-6)


def test_causal_variant_on_the_tiny_policy(tmp_path, encoder):
    from tagpr.models import build_tiny_policy

    base = load_config()
    policy = build_tiny_policy(base.model, base.tags, tmp_path / "policy")
    torch.manual_seed(0)
    cfg = PRMUConfig(variant="causal_lm", hidden_size=32, prefix_tokens=2, epochs=8, lr=1e-3)
    net = checkpoint.build_net(cfg, encoder.dim, 1, str(policy))
    profile = [{"description": "a starship crew", "tag": "sci-fi"}]
    chosen = [make_example("LaMP_2", profile, "a film", "sci-fi", "u1")] * 4
    rejected = [make_example("LaMP_2", profile, "a film", "romance", "u1")] * 4
    feats_c, feats_r = net.featurize(chosen, encoder, {"u1": 0}), net.featurize(rejected, encoder, {"u1": 0})
    assert feats_c.input_ids.shape[0] == 4
    scores = net(feats_c)
    assert scores.shape == (4,)
    assert not torch.allclose(net(feats_c, zero_user=True), scores)
    data = PairData(feats_c, feats_r, ["LaMP_2"] * 4)
    history = fit(net, data, cfg)
    assert history[-1]["loss"] < history[0]["loss"]
    assert net.prefix.weight.grad is not None and net.value.weight.grad is not None
    checkpoint.save(net, tmp_path / "ckpt", cfg, "minilm", encoder.dim, {"u1": 0})
    loaded, meta, _ = checkpoint.load(tmp_path / "ckpt")
    assert meta["variant"] == "causal_lm"
    with torch.no_grad():
        assert torch.allclose(loaded(loaded.featurize(chosen, encoder, {"u1": 0})), net.eval()(feats_c), atol=1e-5)
