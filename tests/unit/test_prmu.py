"""PRMU model, pairs, training and checkpoints, without Ray (frozen packaged MiniLM encoder)."""

import math

import pytest
import torch

from tagpr.config import PRMUConfig, SyntheticConfig, load_config
from tagpr.errors import TagPRError
from tagpr.lamp.io import Prompt, load_split
from tagpr.lamp.synthetic import MovieTagging, write_synthetic
from tagpr.lamp.tasks import LAMP2_LABELS, get_task
from tagpr.prmu import checkpoint
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.features import PRMUBatch, answer_text, make_example
from tagpr.prmu.model import UserPooling
from tagpr.prmu.pairs import hard_negatives, pairs_for_tasks, pairs_from_split
from tagpr.prmu.scorer import PRMUScorer
from tagpr.prmu.train import PairData, bt_loss, evaluate, fit, score_stats
from tagpr.rewards import RewardInput, judge
from tagpr.tags import TagSet


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder("minilm", max_length=64)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lamp")
    write_synthetic(root, SyntheticConfig(seed=1, users={"train": 48, "dev": 12}, questions_per_user=3,
                                          profile_size=6), ["LaMP_1", "LaMP_2", "LaMP_3", "LaMP_7"])
    return root


PROFILE_A = ({"description": "a starship crew", "tag": "sci-fi"}, {"description": "two lovers", "tag": "romance"})
PROFILE_B = ({"description": "slapstick chaos", "tag": "comedy"},)


def test_encoder_is_normalized_and_cached(encoder):
    a = encoder.encode(["a starship crew", "two lovers", "a starship crew"])
    assert a.shape == (3, 384) and torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(a[0], a[2]) and "two lovers" in encoder._cache
    assert encoder.encode([]).shape == (0, 384)


def test_encoder_batches_by_length_and_returns_each_text_its_own_vector():
    """Batches are formed in token-length order; every vector still belongs to its text, equal
    (to float error) to that text encoded alone."""
    texts = ["a long review of a starship crew lost between two stars for many years", "ok",
             "two lovers meet in a small town", "fine", "a starship crew"]
    batched = SentenceEncoder(batch_size=2, cache_size=0)
    alone = torch.stack([batched.encode([t])[0] for t in texts])
    assert torch.allclose(batched.encode(texts), alone, atol=1e-5)


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


def _pairs_with_golds(root, task, encoder, negatives=3):
    split = load_split(root, task, "train")
    gold = {(q.user_id, q.input): q.gold for q in split.questions}
    pairs = pairs_from_split(split, encoder, negatives)
    for p in pairs:  # every pair: the user's gold against another answer, same user, profile and input
        assert p.chosen.input == p.rejected.input and p.chosen.answer != p.rejected.answer
        assert p.chosen.profile == p.rejected.profile and p.chosen.user_id == p.rejected.user_id
    return split, pairs, lambda example: gold[example.user_id, example.input]


def test_hard_negatives_are_other_answers_to_the_same_input(data_root, encoder):
    split, pairs, gold = _pairs_with_golds(data_root, "LaMP_2", encoder)
    assert len(pairs) == 2 * len(split.questions) and all(p.hard for p in pairs)
    for p in pairs:  # the two other tags the movie description names
        named = ["tag: " + t for t in MovieTagging.candidates(p.chosen.input)]
        assert p.chosen.answer == "tag: " + gold(p.chosen) and p.rejected.answer in named and len(named) == 3

    split, pairs, gold = _pairs_with_golds(data_root, "LaMP_1", encoder)
    assert len(pairs) == len(split.questions) and all(p.hard for p in pairs)
    for p in pairs:  # the other reference of the same input
        other = "[2]" if gold(p.chosen) == "[1]" else "[1]"
        assert p.rejected.answer == "title: " + answer_text(get_task("LaMP_1"), p.rejected.input, other)

    _, pairs, gold = _pairs_with_golds(data_root, "LaMP_3", encoder)
    assert all(p.hard for p in pairs)
    for p in pairs:
        chosen, rejected = int(gold(p.chosen)), int(p.rejected.answer.removeprefix("score: "))
        assert 1 <= abs(chosen - rejected) <= 2 and 1 <= rejected <= 5

    split, pairs, gold = _pairs_with_golds(data_root, "LaMP_7", encoder)
    hard = [p for p in pairs if p.hard]
    assert hard and len(hard) < len(pairs)  # tweets another user also paraphrased, and a fallback for the rest
    for p in pairs:  # hard: another user's gold for the same tweet, i.e. the same content in another style
        same = {"text: " + q.gold for q in split.questions
                if q.input == p.chosen.input and q.user_id != p.chosen.user_id}
        assert (p.rejected.answer in same) if p.hard else not same


def test_hard_negative_rules():
    rating, tags, tweet = get_task("LaMP_3"), get_task("LaMP_2"), get_task("LaMP_7")
    assert hard_negatives(rating, "review: fine", "3", [], [], 3) == ["2", "4", "1"]
    assert hard_negatives(rating, "review: fine", "5", [], [], 3) == ["4", "3"]
    real = "Which tag ... description: a heist crew robs a casino"  # no synthetic phrases: the label set
    ranked = hard_negatives(tags, real, "action", ["comedy", "action", "romance"], [], 3)
    assert ranked == ["comedy", "romance", next(t for t in LAMP2_LABELS if t not in ("action", "comedy", "romance"))]
    assert hard_negatives(tweet, "x", "omg a", ["lol b", "yay c"], ["yay a", "omg a"], 3) == ["yay a"]
    assert hard_negatives(tweet, "x", "omg a", ["lol b"], [], 3) == []  # none: the caller falls back


def test_pairs_of_the_first_users_only(data_root, encoder):
    every, users = pairs_for_tasks(str(data_root), ["LaMP_2"], "train", encoder, 3)
    few, first = pairs_for_tasks(str(data_root), ["LaMP_2"], "train", encoder, 3, max_users=5)
    assert first == users[:5] and {p.chosen.user_id for p in few} == set(first)
    assert 0 < len(few) < len(every)


def test_training_beats_user_blind_on_held_out_users(data_root, encoder):
    cfg = PRMUConfig(epochs=25, hidden_size=64)
    train_pairs, users = pairs_for_tasks(str(data_root), ["LaMP_1", "LaMP_2"], "train", encoder, 3)
    dev_pairs, dev_users = pairs_for_tasks(str(data_root), ["LaMP_1", "LaMP_2"], "dev", encoder, 3)
    assert not set(users) & set(dev_users)
    index = {u: i for i, u in enumerate(users)}
    torch.manual_seed(0)
    net = checkpoint.build_net(cfg, encoder.dim, len(index))
    history = fit(net, PairData.build(net, train_pairs, encoder, index), cfg)
    torch.manual_seed(0)
    blind = checkpoint.build_net(cfg, encoder.dim, len(index), user_blind=True)
    blind_history = fit(blind, PairData.build(blind, train_pairs, encoder, index), cfg)
    assert history[-1]["loss"] < history[0]["loss"] and blind_history[-1]["loss"] < blind_history[0]["loss"]
    scores = evaluate(net, blind, dev_pairs, encoder, index)
    assert scores["prmu"]["all"] >= scores["user_blind"]["all"] + 0.15, scores
    assert set(scores["prmu"]) == set(scores["user_blind"]) == {"all", "LaMP_1", "LaMP_2"}


def test_user_blind_model_reads_no_user_information(tmp_path, encoder):
    cfg = PRMUConfig(hidden_size=32)
    index = {"u1": 0, "u2": 1}
    torch.manual_seed(0)
    prmu, blind = checkpoint.build_net(cfg, encoder.dim, 2), checkpoint.build_net(cfg, encoder.dim, 2, user_blind=True)
    assert blind.user is None and not any("user" in name for name, _ in blind.named_parameters())
    a = make_example("LaMP_2", PROFILE_A, "a film about two lovers", "romance", "u1")
    b = make_example("LaMP_2", PROFILE_B, "a film about two lovers", "romance", "u2")
    with torch.no_grad():
        assert prmu(prmu.featurize([a], encoder, index)) != prmu(prmu.featurize([b], encoder, index))
        assert torch.equal(blind(blind.featurize([a], encoder, index)), blind(blind.featurize([b], encoder, index)))
        f = blind.featurize([a], encoder, index).batch
        assert not f.mask.any() and f.user_idx.tolist() == [-1]
    checkpoint.save(blind, tmp_path, cfg, "minilm", encoder.dim, {})
    loaded, meta, _ = checkpoint.load(tmp_path)
    assert meta["user_blind"] is True and loaded.user_blind and loaded.user is None


def test_checkpoint_round_trip(tmp_path, encoder):
    torch.manual_seed(0)
    cfg = PRMUConfig(hidden_size=32)
    net = checkpoint.build_net(cfg, encoder.dim, 2)
    version = checkpoint.save(net, tmp_path, cfg, "minilm", encoder.dim, {"u1": 0, "u2": 1}, {"note": 1})
    assert version.startswith("prmu-") and len(version.split("-")[-1]) == 8
    scorer = PRMUScorer.load(tmp_path, score_with_user_id=True)
    assert scorer.version == version and scorer.user_index == {"u1": 0, "u2": 1} and scorer.score_stats is None
    examples = [make_example("LaMP_2", [{"description": "d", "tag": "comedy"}], "x", a, "u1") for a in ("a", "b")]
    with torch.no_grad():
        expected = net(net.featurize(examples, encoder, {"u1": 0, "u2": 1})).tolist()
    assert scorer.score_examples(examples) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(TagPRError, match="not a PRMU checkpoint"):
        checkpoint.load(tmp_path / "nope")


def test_score_stats_are_written_and_read_back(tmp_path, encoder):
    torch.manual_seed(0)
    cfg = PRMUConfig(hidden_size=32)
    net = checkpoint.build_net(cfg, encoder.dim, 1)
    chosen = [make_example("LaMP_2", PROFILE_A, f"film {i}", "sci-fi", "u1") for i in range(3)]
    rejected = [make_example("LaMP_2", PROFILE_A, f"film {i}", "comedy", "u1") for i in range(3)]
    data = PairData(net.featurize(chosen, encoder, {"u1": 0}), net.featurize(rejected, encoder, {"u1": 0}),
                    ["LaMP_2"] * 3)
    stats = score_stats(net, data, with_user_id=False)
    checkpoint.save(net, tmp_path, cfg, "minilm", encoder.dim, {"u1": 0}, score_stats=stats)
    scorer = PRMUScorer.load(tmp_path)
    raw = torch.tensor(scorer.score_examples(chosen + rejected))
    assert scorer.score_stats == pytest.approx((raw.mean().item(), raw.std(correction=0).item()), abs=1e-5)
    assert score_stats(net, data, with_user_id=True)["mean"] != pytest.approx(stats["mean"], abs=1e-5)


def test_scorer_leaves_out_user_id_embeddings_unless_configured(tmp_path, encoder):
    torch.manual_seed(0)
    cfg = PRMUConfig(hidden_size=32)
    checkpoint.save(checkpoint.build_net(cfg, encoder.dim, 1), tmp_path, cfg, "minilm", encoder.dim, {"u1": 0})
    known = make_example("LaMP_2", PROFILE_A, "a film", "sci-fi", "u1")
    stranger = make_example("LaMP_2", PROFILE_A, "a film", "sci-fi", "someone-new")
    blind_to_ids = PRMUScorer.load(tmp_path)
    assert blind_to_ids.score_with_user_id is False
    assert blind_to_ids.score_examples([known]) == blind_to_ids.score_examples([stranger])
    with_ids = PRMUScorer.load(tmp_path, score_with_user_id=True)
    assert with_ids.score_examples([known]) != pytest.approx(with_ids.score_examples([stranger]), abs=1e-6)


def test_scorer_reads_the_parsed_answer(tmp_path, encoder):
    cfg = PRMUConfig(hidden_size=16)
    checkpoint.save(checkpoint.build_net(cfg, encoder.dim, 0), tmp_path, cfg, "minilm", encoder.dim, {})
    scorer = PRMUScorer.load(tmp_path)
    tags = TagSet(load_config().tags)
    prompt = Prompt("1", "LaMP_2", "q", ({"description": "d", "tag": "comedy"},))
    tagged = judge(tags, RewardInput(prompt, "<summarize>x</summarize><answer>comedy</answer>"))
    plain = judge(tags, RewardInput(prompt, "comedy"))
    a, b = scorer.score([tagged, plain])
    assert a == pytest.approx(b, abs=1e-6)


def test_saved_embeddings_score_as_encoding_every_text_does(tmp_path, data_root, monkeypatch):
    """A scorer that preloads its checkpoint's embeddings gives the numbers of one with no cache at all,
    and runs the encoder on none of the texts; a store another encoder made is ignored."""
    torch.manual_seed(0)
    cfg = PRMUConfig(hidden_size=32)
    checkpoint.save(checkpoint.build_net(cfg, 384, 0), tmp_path, cfg, "minilm", 384, {})
    questions = load_split(data_root, "LaMP_2", "dev").questions[:12]
    examples = [make_example("LaMP_2", q.profile, q.input, q.gold, q.user_id) for q in questions]
    uncached = PRMUScorer.load(tmp_path)
    uncached.encoder.cache_size = 0
    expected = uncached.score_examples(examples)
    filled = PRMUScorer.load(tmp_path)
    filled.score_examples(examples)
    stored = filled.encoder.save_cache(tmp_path / checkpoint.EMBEDDINGS)
    assert stored == len({t for e in examples for t in (e.input, e.answer, *(x for p in e.profile for x in p))})

    preloaded = PRMUScorer.load(tmp_path)
    monkeypatch.setattr(preloaded.encoder, "_forward", lambda texts: pytest.fail(f"encoded {texts[:2]}"))
    assert preloaded.score_examples(examples) == pytest.approx(expected, abs=1e-5)
    assert SentenceEncoder("minilm", max_length=32).load_cache(tmp_path / checkpoint.EMBEDDINGS) == 0
    assert SentenceEncoder("minilm", max_length=32).load_cache(tmp_path / "missing.pt") == 0


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
    other = [make_example("LaMP_2", PROFILE_B, "a film", "sci-fi", "u1")] * 4
    assert not torch.allclose(net(net.featurize(other, encoder, {"u1": 0})), scores)  # the prefix reads the profile
    blind = checkpoint.build_net(cfg, encoder.dim, 1, str(policy), user_blind=True)
    with torch.no_grad():
        assert torch.equal(blind(blind.featurize(chosen, encoder, {"u1": 0})),
                           blind(blind.featurize(other, encoder, {})))
    data = PairData(feats_c, feats_r, ["LaMP_2"] * 4)
    history = fit(net, data, cfg)
    assert history[-1]["loss"] < history[0]["loss"]
    assert net.prefix.weight.grad is not None and net.value.weight.grad is not None
    checkpoint.save(net, tmp_path / "ckpt", cfg, "minilm", encoder.dim, {"u1": 0})
    loaded, meta, _ = checkpoint.load(tmp_path / "ckpt")
    assert meta["variant"] == "causal_lm"
    with torch.no_grad():
        assert torch.allclose(loaded(loaded.featurize(chosen, encoder, {"u1": 0})), net.eval()(feats_c), atol=1e-5)


def test_training_refuses_to_score_reasoning_it_never_saw(tmp_path):
    from tagpr.errors import ConfigError
    from tagpr.jobs.prmu import train

    cfg = load_config(None, ["prmu.include_reasoning=true", f"run.root={tmp_path}"])
    with pytest.raises(ConfigError, match="prmu.include_reasoning"):
        train(cfg, out=tmp_path / "prmu")
    assert not (tmp_path / "prmu").exists()
