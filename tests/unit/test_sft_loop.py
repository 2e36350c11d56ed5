"""The SFT loop on the tiny policy in one process: loss goes down, dev loss is per assistant token."""

import json

import pytest
import torch

from actors.train_strategy import DDPStrategy
from tagpr.models import build_tiny_policy, load_policy
from tagpr.sft.data import tokenize_chains
from tagpr.sft.train import epoch_order, eval_loss, train_epochs

CHAIN = {"task": "LaMP_2", "input": "Which tag fits: description: a starship crew. candidates: sci-fi, comedy",
         "profile": json.dumps([{"tag": "sci-fi", "description": "robots"}]),
         "response": "<examine_examples>sci-fi before.</examine_examples><answer>sci-fi</answer>"}


def test_loop_learns_and_reports_progress(cfg, tagset, tmp_path):
    model, tok = load_policy(cfg.model, str(build_tiny_policy(cfg.model, cfg.tags, tmp_path / "p")))
    data = tokenize_chains([CHAIN] * 8, tok, tagset, 4, 256)
    sft = cfg.sft.model_copy(update={"epochs": 3, "batch_size": 4, "lr": 3e-3})
    stepper = DDPStrategy(model, sft, sft.lr, 0.0, sft.batch_size, world=1)
    before = eval_loss(stepper, data, 4, tok.pad_token_id)
    epochs, lines, steps = [], [], []
    history = train_epochs(stepper, data, data, sft, tok.pad_token_id, on_epoch=lambda e, s: epochs.append(e),
                           log=lines.append, on_step=lambda done, total: steps.append((done, total)))
    assert epochs == [1, 2, 3] and [h["epoch"] for h in history] == [1, 2, 3]
    assert steps == [(i, 6) for i in range(1, 7)]  # 2 steps per epoch, counted across epochs
    assert history[-1]["dev_loss"] < before / 2
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert any("step 2/2" in line for line in lines)
    resumed = train_epochs(stepper, data, None, sft.model_copy(update={"epochs": 4}), tok.pad_token_id, start_epoch=3)
    assert [h["epoch"] for h in resumed] == [4] and "dev_loss" not in resumed[0]


def test_lr_schedule(cfg):
    from tagpr.schedule import lr_at

    s = cfg.sft.model_copy(update={"lr": 1.0, "warmup_steps": 4, "lr_schedule": "cosine"})
    assert [lr_at(i, 104, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 104, s) == 1.0 and abs(lr_at(54, 104, s) - 0.5) < 1e-9 and lr_at(104, 104, s) == 0.0
    flat = s.model_copy(update={"lr_schedule": "constant", "warmup_steps": 0})
    assert lr_at(0, 10, flat) == lr_at(9, 10, flat) == 1.0


def test_length_grouping_sorts_each_run_of_batches_and_keeps_the_shuffle_across_runs(cfg):
    lengths = [int(x) for x in torch.randint(10, 500, (103,), generator=torch.Generator().manual_seed(1))]
    plain = cfg.sft.model_copy(update={"batch_size": 4, "length_grouping": 0})
    grouped = plain.model_copy(update={"length_grouping": 5})
    shuffled, order = epoch_order(lengths, plain, epoch=2, seed=7), epoch_order(lengths, grouped, epoch=2, seed=7)
    assert torch.equal(epoch_order(lengths, plain.model_copy(update={"length_grouping": 1}), 2, 7), shuffled)
    for start in range(0, 103, 20):  # each run of 5 batches: the shuffle's examples, longest first
        run = order[start:start + 20].tolist()
        assert sorted(run) == sorted(shuffled[start:start + 20].tolist())
        assert [lengths[i] for i in run] == sorted((lengths[i] for i in run), reverse=True)

    def padded(o):
        return sum(max(lengths[i] for i in o[s:s + 4].tolist()) * len(o[s:s + 4]) for s in range(0, len(o), 4))
    assert padded(order) < 0.8 * padded(shuffled)
    ranks = [epoch_order(lengths, grouped, 2, 7, rank, 2) for rank in (0, 1)]
    assert sorted(torch.cat(ranks).tolist()) == list(range(103))  # ranks share the epoch, grouped each


def _lm(arch: str, attn: str):
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, f"{arch}Config")(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128)
    config._attn_implementation = attn
    return getattr(transformers, f"{arch}ForCausalLM")(config)


@pytest.mark.parametrize("arch", ["Qwen2", "Llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_has_the_padded_batchs_loss_and_gradients(arch, attn):
    import torch

    from tagpr.sft.data import IGNORE, collate, collate_packed

    gen = torch.Generator().manual_seed(1)
    ids, labels = [], []
    for n_prompt, n_target in [(7, 5), (3, 2), (12, 9), (4, 4), (9, 1)]:
        x = torch.randint(1, 64, (n_prompt + n_target,), generator=gen).tolist()
        ids.append(x)
        labels.append([IGNORE] * n_prompt + x[n_prompt:])
    packed = collate_packed(ids, labels, 0, 24)
    assert packed["input_ids"].shape[0] < len(ids) and "attention_mask" not in packed
    assert int((packed["labels"] != IGNORE).sum()) == sum(len(y) - y.count(IGNORE) for y in labels)
    grads = []
    for batch in (collate(ids, labels, 0), packed):
        lm = _lm(arch, attn)
        loss = lm(**batch).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in lm.parameters()]))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for a, b in zip(grad_a, grad_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_packed_rows_do_not_attend_across_examples():
    """Changing the first example of a row leaves the second one's logits unchanged."""
    import torch

    from tagpr.sft.data import collate_packed

    lm = _lm("Qwen2", "sdpa").eval()

    def logits(first):
        ids = [[1, 2, 3, 4, 5, 6, 7], first, [9, 10, 11]]
        batch = collate_packed(ids, ids, 0, 16)
        assert batch["input_ids"].shape == (2, 7)  # rows as wide as the longest example; the two others share one
        assert batch["input_ids"][1, 4:].tolist() == [9, 10, 11]
        return lm(**{k: v for k, v in batch.items() if k != "labels"}).logits[1]

    before, after = logits([5, 6, 7, 8]), logits([20, 21, 22, 23])
    assert not torch.allclose(after[:4], before[:4])
    torch.testing.assert_close(after[4:], before[4:])


def test_auto_precision_is_bf16_only_where_the_device_has_it(monkeypatch, caplog):
    """Emulated bf16 is many times slower than fp32 on a CPU without AVX512-BF16 or AMX: ``auto`` picks
    bf16 only where it is native, and an explicit ``bf16`` there is kept with a warning."""
    import actors.train_strategy as ts

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(ts, "native_bf16", lambda device, native=native: native)
        assert ts.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
        assert ts.resolve_precision("fp32", cpu) == "fp32"
        caplog.clear()
        assert ts.resolve_precision("bf16", cpu) == "bf16"
        assert ("emulated" in caplog.text) is not native


def _chains(gen, shapes):
    """Token ids and labels for (prompt id, prompt length, response length) triples: one prompt id, one prompt."""
    prompts, ids, labels = {}, [], []
    for key, n_prompt, n_target in shapes:
        prompt = prompts.setdefault(key, torch.randint(1, 64, (n_prompt,), generator=gen).tolist())
        target = torch.randint(1, 64, (n_target,), generator=gen).tolist()
        ids.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    return ids, labels


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_batch_has_the_padded_batchs_loss_and_gradients(lora):
    """Chains sharing a prompt, run as ResponseLM's prompt-once batch, give the padded HF batch's loss
    and every parameter's gradient, for a batch mixing prompt and response lengths."""
    from actors.train_strategy import DDPStrategy
    from tagpr.config import SFTConfig
    from tagpr.rl.forward import ResponseLM
    from tagpr.sft.data import collate, collate_responses
    from tagpr.sft.train import batch_loss

    ids, labels = _chains(torch.Generator().manual_seed(3),
                          [("a", 9, 5), ("b", 4, 2), ("a", 9, 1), ("c", 12, 7), ("a", 9, 3), ("b", 4, 6)])
    results = []
    for shared in (False, True):
        lm = _lm("Qwen2", "sdpa")
        if lora:
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(1)
            lm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
        module = ResponseLM(lm, True) if shared else lm
        stepper = DDPStrategy(module, SFTConfig(), 1e-3, 0.0, len(ids), world=1)
        batch = collate_responses(ids, labels, 0) if shared else collate(ids, labels, 0)
        if shared:
            assert batch["prompt_ids"].shape[0] == 3
        loss, n = batch_loss(stepper, batch)
        loss.backward()
        results.append((loss.detach(), n, {k: p.grad.clone() for k, p in lm.named_parameters() if p.requires_grad}))
    (loss_a, n_a, grad_a), (loss_b, n_b, grad_b) = results
    assert n_a == n_b == 24
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grad_a.keys() == grad_b.keys() and len(grad_a) > 0
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-5, atol=1e-7)


def test_a_prompts_chains_stay_together_in_the_epoch_order(cfg):
    lengths = [int(x) for x in torch.randint(10, 500, (60,), generator=torch.Generator().manual_seed(2))]
    groups = [list(range(i, min(i + 3, 60))) for i in range(0, 60, 3)]
    sft = cfg.sft.model_copy(update={"batch_size": 6, "length_grouping": 2})
    order = epoch_order(lengths, sft, epoch=1, seed=5, groups=groups).tolist()
    assert sorted(order) == list(range(60))
    for g in groups:
        at = order.index(g[0])
        assert order[at:at + 3] == g
    singles = epoch_order(lengths, sft.model_copy(update={"length_grouping": 0}), 1, 5)
    assert torch.equal(singles, torch.randperm(60, generator=torch.Generator().manual_seed(6)))
    ranks = [epoch_order(lengths, sft, 1, 5, rank, 2, groups).tolist() for rank in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(60)) and len(ranks[0]) == len(ranks[1]) == 30


def test_sft_shares_prompts_only_where_chains_repeat_them(cfg, tagset, tmp_path):
    import pydantic

    from tagpr.config import SFTConfig
    from tagpr.rl.forward import ResponseLM
    from tagpr.sft.train import sft_module

    model, tok = load_policy(cfg.model, str(build_tiny_policy(cfg.model, cfg.tags, tmp_path / "p")))
    other = {**CHAIN, "input": CHAIN["input"].replace("starship", "submarine")}
    distinct, repeated = (tokenize_chains(c, tok, tagset, 4, 256) for c in ([CHAIN, other], [CHAIN, other, CHAIN]))
    assert repeated.prompt_groups() == [[0, 2], [1]]
    assert sft_module(model, cfg.sft, distinct) is model
    wrapped = sft_module(model, cfg.sft, repeated)
    assert isinstance(wrapped, ResponseLM) and wrapped.shared_prefix and wrapped.lm is model
    assert sft_module(model, cfg.sft.model_copy(update={"shared_prefix": "off"}), repeated) is model
    assert sft_module(model, cfg.sft.model_copy(update={"packing": True}), repeated) is model
    with pytest.raises(pydantic.ValidationError, match="packing"):
        SFTConfig(shared_prefix="on", packing=True)


def test_loop_learns_with_shared_prompts(cfg, tagset, tmp_path):
    from tagpr.sft.train import sft_module

    model, tok = load_policy(cfg.model, str(build_tiny_policy(cfg.model, cfg.tags, tmp_path / "p")))
    other = {**CHAIN, "response": "<examine_examples>robots.</examine_examples><answer>comedy</answer>"}
    data = tokenize_chains([CHAIN, other] * 4, tok, tagset, 4, 256)
    sft = cfg.sft.model_copy(update={"epochs": 4, "batch_size": 4, "lr": 3e-3})
    stepper = DDPStrategy(sft_module(model, sft, data), sft, sft.lr, 0.0, sft.batch_size, world=1)
    before = eval_loss(stepper, data, 4, tok.pad_token_id, by_prompt=True)
    history = train_epochs(stepper, data, data, sft, tok.pad_token_id, by_prompt=True)
    assert history[-1]["dev_loss"] < before / 2 and history[-1]["tokens_per_s"] > 0
