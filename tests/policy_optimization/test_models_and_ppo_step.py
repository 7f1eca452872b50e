"""Components on tiny random models: loading code, EOS masking, one PPO iteration."""

import functools

import pytest
import torch
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf.bootstrap import pass_through_pretrained
from rlhf.config import TrainPolicyParams
from rlhf.demo import domain
from rlhf.logprobs import response_logits, token_logprobs
from rlhf.policy_optimization.engine import make_accelerator
from rlhf.policy_optimization.models import PolicyModels
from rlhf.policy_optimization.rollout import RewardScorer, ScoreNormalizer, collect_rollout
from rlhf.policy_optimization.update import policy_update
from rlhf.pretrained import load_policy, load_scalar_head_model, load_tokenizer
from rlhf.sampling import CompiledSampler, mask_after_eos, sample_with_logprobs
from tests.support.tiny import tiny_gpt2_config as tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def test_mask_keeps_tokens_up_to_and_including_first_eos():
    eos = 9
    ids = torch.tensor([[1, 2, 9, 3, 9], [1, 2, 3, 4, 5], [9, 1, 1, 1, 1]])
    mask, ended = mask_after_eos(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_tokenizer_returns_no_token_type_ids(tokenizer):
    # GPT-2 would add token-type embeddings and degenerate at generation (FACTS.md).
    assert "token_type_ids" not in tokenizer("tell me about cats .")


def test_pretrained_pass_through_uses_the_same_loading_code(tmp_path, tokenizer):
    torch.manual_seed(0)
    source = tmp_path / "user-model"
    GPT2LMHeadModel(tiny_config(tokenizer)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    info = pass_through_pretrained(str(source), CPU, tmp_path / "sft")
    original, copied = load_policy(source, CPU), load_policy(tmp_path / "sft", CPU)
    assert info["parameters"] == original.num_parameters()
    assert all(torch.equal(a, b) for a, b in zip(original.parameters(), copied.parameters()))
    assert load_tokenizer(tmp_path / "sft").get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("sampler", ["eager", "compiled"])
def test_sampling_keeps_the_logprobs_a_full_forward_pass_gives(tokenizer, sampler):
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_config(tokenizer)).eval()
    # A random model almost never draws EOS, which would leave the padding-after-EOS path untested:
    # a bias on the EOS logit makes about one step in ten end the response.
    head = torch.nn.Linear(policy.lm_head.in_features, policy.lm_head.out_features, bias=True)
    head.weight = policy.lm_head.weight  # still tied to the embeddings
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 2.7
    policy.lm_head = head
    sample = CompiledSampler(policy) if sampler == "compiled" else functools.partial(sample_with_logprobs, policy)
    query = tokenizer([p for p, _ in domain.all_prompts()[:16]], return_tensors="pt", padding=True, padding_side="left")
    ids, mask, ended, logprobs = sample(
        query["input_ids"], query["attention_mask"], 12, 0.7, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    with torch.no_grad():
        logits = response_logits(policy, query["input_ids"], query["attention_mask"], ids, mask, 0.7)
    assert torch.allclose(logprobs, token_logprobs(logits, ids) * mask, atol=1e-5)
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    assert ids.shape[1] == int(mask.sum(-1).max())  # no column of padding only: it stops at the last EOS
    assert ended.tolist() == (ids == tokenizer.eos_token_id).any(-1).tolist()
    assert 0 < int(ended.sum()) < len(ended)  # some responses ended early, some ran to the end
    ended_rows = mask[ended].sum(-1) < ids.shape[1]
    assert ended_rows.any()  # an early EOS: padding after it in that row


def test_compiled_sampler_keeps_its_cache_buffers_for_batches_of_the_same_shape(tokenizer):
    torch.manual_seed(0)
    sampler = CompiledSampler(GPT2LMHeadModel(tiny_config(tokenizer)).eval())
    prompts = [p for p, _ in domain.all_prompts()]

    def sample(batch):
        query = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left")
        return sampler(query["input_ids"], query["attention_mask"], 6, 1.0, -1, tokenizer.pad_token_id)

    sample(prompts[:4])
    cache, keys = sampler.cache, sampler.cache.layers[0].keys.data_ptr()
    ids, mask, ended, _ = sample(prompts[4:8])  # other prompts, other lengths, same bucket
    assert sampler.cache is cache and cache.layers[0].keys.data_ptr() == keys  # the captured graph's buffers
    assert ids.shape == (4, 6) and mask.all() and not ended.any()  # no EOS id (-1): every step runs
    sample(prompts[:3])
    assert sampler.cache is not cache  # another batch size: a new cache (and compile)


@pytest.mark.gpu
def test_compiled_sampler_replays_a_cuda_graph_under_bf16_autocast(tokenizer):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_config(tokenizer)).cuda().eval()
    sampler = CompiledSampler(policy)
    query = tokenizer([p for p, _ in domain.all_prompts()[:8]], return_tensors="pt", padding=True, padding_side="left")
    query = {name: tensor.cuda() for name, tensor in query.items()}
    counters.clear()
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        for _ in range(3):  # cudagraph trees warm up, record, then replay
            ids, mask, _, logprobs = sampler(
                query["input_ids"], query["attention_mask"], 12, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
            )
        full = token_logprobs(response_logits(policy, query["input_ids"], query["attention_mask"], ids, mask, 1.0), ids)
    assert counters["inductor"]["cudagraph_skips"] == 0  # the step ran as a CUDA graph, not eagerly
    assert torch.allclose(logprobs, full.float() * mask, atol=0.1)  # bf16 on both sides, cache vs full pass


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)])
def test_one_ppo_iteration_moves_policy_and_critic_but_not_reference(tokenizer, tmp_path, device):
    device = torch.device(device)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_config(tokenizer)).to(device)
    reference = GPT2LMHeadModel(tiny_config(tokenizer)).to(device)
    reference.load_state_dict(policy.state_dict())
    GPT2ForSequenceClassification(tiny_config(tokenizer, num_labels=1)).save_pretrained(tmp_path / "rm")
    critic = load_scalar_head_model(tmp_path / "rm", device, tokenizer.pad_token_id)
    reward_model = load_scalar_head_model(tmp_path / "rm", device, tokenizer.pad_token_id)
    params = TrainPolicyParams(
        batch_size=8, minibatch_size=4, micro_batch_size=2, ppo_epochs=2, max_new_tokens=8, learning_rate=1e-3
    )
    models = PolicyModels.build(policy, critic, params, reference=reference)
    prompts = [p for p, _ in domain.all_prompts()[:8]]
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    critic_before = [p.detach().clone() for p in critic.parameters()]
    reference_before = [p.detach().clone() for p in reference.parameters()]

    rollout, stats = collect_rollout(
        models, RewardScorer(reward_model, tokenizer), ScoreNormalizer("none"), tokenizer, prompts, params, 0.05
    )
    assert stats["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before any update
    assert rollout.advantages.shape == rollout.mask.shape == rollout.response_ids.shape
    accelerator = make_accelerator(params, device)  # minibatch 4 of micro-batches 2: 2 accumulation steps
    optimizer = torch.optim.Adam(models.trained.parameters(), 1e-3)
    trained, optimizer = accelerator.prepare(models.trained, optimizer)  # as train_policy does
    shuffle = torch.Generator().manual_seed(0)
    steps = []
    optimizer.optimizer.register_step_post_hook(lambda *args: steps.append(1))
    update = policy_update(trained, trained, accelerator, optimizer, rollout, params, shuffle, None)
    assert len(steps) == params.ppo_epochs * params.batch_size // params.minibatch_size  # one per minibatch
    assert set(update) >= {"policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "policy_grad_norm"}
    assert any(not torch.equal(before[name], p) for name, p in policy.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, critic.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(reference_before, reference.parameters()))


def test_the_rollout_vs_update_logprob_drift_is_measured_and_recomputing_removes_it(tokenizer, tmp_path):
    """The drift policy_update logs is the sampler's log pi_old against the update's first forward:
    0 in fp32 on CPU. With recompute, the trainer's forward stands for pi_old before the KL and the
    advantages are computed from it (shifted by hand here, as bf16 shifts it on CUDA: the rollout's
    KL moves by the shift), and the sampler's log-probs are kept for the rollout correction."""
    from rlhf.policy_optimization.update import recompute_logprobs

    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_config(tokenizer))
    GPT2ForSequenceClassification(tiny_config(tokenizer, num_labels=1)).save_pretrained(tmp_path / "rm")
    critic = load_scalar_head_model(tmp_path / "rm", torch.device("cpu"), tokenizer.pad_token_id)
    params = TrainPolicyParams(batch_size=8, minibatch_size=8, micro_batch_size=4, ppo_epochs=1, max_new_tokens=8)
    reference = GPT2LMHeadModel(tiny_config(tokenizer))
    reference.load_state_dict(policy.state_dict())
    models = PolicyModels.build(policy, critic, params, reference=reference)
    reward_model = load_scalar_head_model(tmp_path / "rm", torch.device("cpu"), tokenizer.pad_token_id)
    scorer = RewardScorer(reward_model, tokenizer)
    prompts = [p for p, _ in domain.all_prompts()[:8]]

    def shifted(*batch):  # the trainer's forward, 0.07 nats per token below the sampler
        return recompute_logprobs(models.trained, params, *batch) - 0.07

    torch.manual_seed(1)
    plain, _ = collect_rollout(models, scorer, ScoreNormalizer("none"), tokenizer, prompts, params, 0.05)
    torch.manual_seed(1)
    rollout, stats = collect_rollout(
        models, scorer, ScoreNormalizer("none"), tokenizer, prompts, params, 0.05, recompute_logprobs=shifted
    )
    assert torch.equal(rollout.response_ids, plain.response_ids)  # the same samples
    assert stats["rollout_logprob_drift"] == pytest.approx(0.07, abs=1e-4)
    assert torch.allclose(rollout.rollout_logprobs, plain.logprobs, atol=1e-6)  # the sampler's, kept
    assert torch.allclose(rollout.logprobs, (plain.logprobs - 0.07) * rollout.mask, atol=1e-5)
    # the reference is the start policy, so the k1 KL reads -0.07 per token: pi_old is the recomputed one
    assert torch.allclose(rollout.kl, -0.07 * rollout.mask.sum(-1), atol=1e-4)
    assert not torch.allclose(rollout.kl, plain.kl, atol=1e-3)
    rollout.logprobs = (plain.logprobs - 0.05) * rollout.mask
    accelerator = make_accelerator(params, torch.device("cpu"))  # 2 micro-batches per optimizer step
    trained, optimizer = accelerator.prepare(models.trained, torch.optim.Adam(models.trained.parameters(), 1e-3))
    shuffle = torch.Generator().manual_seed(0)
    update = policy_update(trained, trained, accelerator, optimizer, rollout, params, shuffle, None)
    assert update["update_logprob_drift"] == pytest.approx(0.05, abs=1e-4)  # read before the first step only
