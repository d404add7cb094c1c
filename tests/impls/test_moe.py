import pytest
import torch

from impls.moe import grouped
from impls.moe.grouped import dispatcher, grouped_dispatch, grouped_mm_unsupported, sort_by_expert
from impls.moe.lm import LMConfig, stream, train
from impls.moe.reference import (
    MoE,
    MoEConfig,
    RoutedExperts,
    SoftmaxRouter,
    balance_loss,
    expert_load,
    loop_dispatch,
    max_vio,
)
from impls.moe.router import AuxFreeRouter, RouterConfig, sequence_balance_loss


@pytest.mark.parametrize("load, expected", [
    ([4, 4, 4, 4], 0.0),  # balanced
    ([8, 4, 2, 2], 1.0),  # mean 4, max 8
    ([16, 0, 0, 0], 3.0),  # collapse: E - 1
    ([3, 1, 2], 0.5),  # mean 2, max 3
])
def test_max_vio_of_known_loads(load, expected):
    assert max_vio(torch.tensor(load)) == pytest.approx(expected)


def test_max_vio_and_load_reject_what_has_no_answer():
    with pytest.raises(ValueError, match="non-empty"):
        max_vio(torch.tensor([]))
    with pytest.raises(ValueError, match="routed no token"):
        max_vio(torch.zeros(4))
    assert expert_load(torch.tensor([[0, 2], [2, 3]]), 5).tolist() == [1, 0, 2, 1, 0]


def test_top_k_above_expert_count_is_a_clear_error():
    for build in (lambda: MoEConfig(dim=8, n_routed=4, top_k=5, expert_hidden=8),
                  lambda: SoftmaxRouter(8, 4, 5), lambda: AuxFreeRouter(8, 4, 5),
                  lambda: LMConfig(n_routed=4, top_k=5)):
        with pytest.raises(ValueError, match=r"top_k must be in 1\.\.4 \(the number of routed experts\), got 5"):
            build()


@pytest.mark.parametrize("kwargs, match", [
    ({"n_groups": 3}, "divide"),  # 8 experts on 3 nodes
    ({"n_groups": 4, "topk_groups": 5}, "topk_groups"),
    ({"n_groups": 4, "topk_groups": 1}, "at least top_k"),  # one node of 2 experts cannot hold top-4
    ({"gamma": -1.0}, "gamma"),
])
def test_bad_router_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AuxFreeRouter(8, 8, 4, **kwargs)


def test_balance_loss_known_values():
    T, E = 64, 4
    uniform = torch.full((T, E), 1 / E)
    balanced = torch.arange(T).remainder(E)[:, None]  # [T, 1]: every expert T / E slots
    assert balance_loss(uniform, balanced, E).item() == pytest.approx(1.0)
    collapsed = torch.zeros(T, 1, dtype=torch.long)
    one_hot = torch.zeros(T, E).index_fill_(1, torch.tensor([0]), 1.0)
    assert balance_loss(one_hot, collapsed, E).item() == pytest.approx(E)  # f_0 = E, P_0 = 1
    # one sequence spanning the batch: the sequence-wise loss is the batch loss on normalized scores
    scores = torch.rand(T, E)
    idx = scores.topk(2, -1).indices
    probs = scores / scores.sum(-1, keepdim=True)
    assert sequence_balance_loss(scores, idx, E, T).item() == pytest.approx(balance_loss(probs, idx, E).item())
    with pytest.raises(ValueError, match="sequences of 5"):
        sequence_balance_loss(scores, idx, E, 5)


def _eq_17_20(scores: list, chosen: list, n_experts: int, top_k: int) -> float:
    """DeepSeek-V3 eq. 17-20 for one sequence, by hand: sum_i f_i P_i, f_i = E / (K S) * tokens routed to i,
    P_i = mean over tokens of s_i / sum_j s_j."""
    S = len(scores)
    f = [n_experts / (top_k * S) * sum(i in row for row in chosen) for i in range(n_experts)]
    p = [sum(row[i] / sum(row) for row in scores) / S for i in range(n_experts)]
    return sum(fi * pi for fi, pi in zip(f, p))


def test_sequence_balance_loss_is_the_mean_over_sequences_not_the_batch_loss():
    E, K = 4, 2
    # sequence 0 sends every token to experts 0 and 1, sequence 1 to experts 2 and 3 (skewed, with varied scores):
    # each sequence alone is unbalanced, the batch of both is perfectly balanced
    seq0 = [[0.9, 0.8, 0.1, 0.2], [0.7, 0.9, 0.3, 0.1], [0.6, 0.5, 0.2, 0.4]]
    seq1 = [[0.2, 0.1, 0.9, 0.6], [0.1, 0.3, 0.5, 0.8], [0.4, 0.2, 0.7, 0.9]]
    scores = torch.tensor(seq0 + seq1, dtype=torch.float64)  # [2 * 3, E]
    idx = scores.topk(K, dim=-1).indices  # [6, K]
    assert set(idx[:3].flatten().tolist()) == {0, 1} and set(idx[3:].flatten().tolist()) == {2, 3}
    chosen = idx.tolist()
    by_hand = [_eq_17_20(seq0, chosen[:3], E, K), _eq_17_20(seq1, chosen[3:], E, K)]
    loss = sequence_balance_loss(scores, idx, E, seq_len=3).item()
    assert loss == pytest.approx(sum(by_hand) / 2, rel=1e-12)
    batch = _eq_17_20(seq0 + seq1, chosen, E, K)  # f_i = 1 for every expert: the batch hides the imbalance
    assert sequence_balance_loss(scores, idx, E, seq_len=6).item() == pytest.approx(batch, rel=1e-12)
    assert loss > batch + 0.3  # measured 1.54 against 1.0


def test_selection_uses_the_bias_but_the_gating_weights_do_not():
    torch.manual_seed(0)
    router = AuxFreeRouter(16, 8, 2)
    x = torch.randn(32, 16)
    router.bias[5] = 10.0  # larger than any sigmoid gap: expert 5 is always selected
    r = router(x)
    assert (r.indices == 5).any(-1).all()
    top = torch.sigmoid(router.gate(x)).gather(1, r.indices)  # affinities without the bias
    torch.testing.assert_close(r.weights, top / top.sum(-1, keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(32))
    assert "bias" not in dict(router.named_parameters())  # no gradient ever reaches it
    r.weights.sum().backward()
    assert router.bias.grad is None and router.gate.weight.grad is not None


def test_sigmoid_aux_router_has_the_sigmoid_gate_and_the_aux_loss_but_no_bias():
    torch.manual_seed(0)
    router = RouterConfig("sigmoid_aux", aux_alpha=0.01).build(16, 8, 2)
    x = torch.randn(32, 16)
    r = router(x)
    scores = torch.sigmoid(router.gate(x))
    top = scores.gather(1, r.indices)
    torch.testing.assert_close(r.weights, top / top.sum(-1, keepdim=True))
    torch.testing.assert_close(r.indices, scores.topk(2, dim=-1).indices)
    expected = 0.01 * balance_loss(scores / scores.sum(-1, keepdim=True), r.indices, 8)
    torch.testing.assert_close(r.aux_loss, expected)
    r.aux_loss.backward()
    assert router.gate.weight.grad.abs().sum() > 0  # the loss trains the gate
    router.update_bias(torch.tensor([16, 0, 0, 0, 0, 0, 0, 0]))
    assert router.bias.abs().max() == 0  # gamma 0: the bias never moves
    with pytest.raises(ValueError, match="kind must be"):
        RouterConfig("sigmoid")


def test_bias_update_is_plus_minus_gamma_by_the_sign_of_the_load_error():
    router = AuxFreeRouter(4, 4, 1, gamma=0.25)
    router.update_bias(torch.tensor([6, 2, 4, 4]))  # mean 4: over, under, exactly balanced twice
    assert router.bias.tolist() == [-0.25, 0.25, 0.0, 0.0]


def test_bias_update_moves_load_toward_balance_on_a_fixed_skewed_input():
    torch.manual_seed(0)
    # gamma 0.003: on one fixed batch a larger step overshoots and the loads flip between two states (0.01: MaxVio
    # alternating 0.13 / 0.88); training sees a new batch every step
    router = AuxFreeRouter(16, 8, 2, gamma=0.003)
    with torch.no_grad():
        router.gate.weight[:2] += 0.3  # experts 0 and 1 win every token
    x = torch.randn(512, 16).abs()
    vios = []
    for _ in range(300):
        load = expert_load(router(x).indices, 8)
        vios.append(max_vio(load))
        router.update_bias(load)
    assert vios[0] == 3.0  # collapse onto 2 of 8 experts: 8 / 2 - 1
    assert sum(vios[-20:]) / 20 < 0.1 * vios[0]  # measured 0.06
    assert router.bias[:2].max() < router.bias[2:].min()  # the overloaded experts were pushed down


def test_node_limited_routing_ranks_nodes_by_the_sum_of_their_top_k_over_m_scores():
    # 8 experts on 4 nodes of 2, top-4 on at most 2 nodes: DeepSeek-V3 ranks a node by the sum of its K/M = 2 highest
    # affinities. Nodes 0 and 1 hold the single highest scores (max 0.95, 0.9; sums 0.95, 0.9), nodes 2 and 3 two
    # good ones each (max 0.6, 0.55; sums 1.2, 1.1): a max-per-node rule picks nodes {0, 1}, the sum picks {2, 3}.
    router = AuxFreeRouter(4, 8, 4, n_groups=4, topk_groups=2)
    scores = torch.tensor([[0.95, 0.0, 0.9, 0.0, 0.6, 0.6, 0.55, 0.55]])  # [1, E]
    per_node = scores.view(1, 4, 2)
    assert set(per_node.amax(-1).topk(2).indices[0].tolist()) == {0, 1}  # what the max rule would choose
    assert set(router.select(scores)[0].tolist()) == {4, 5, 6, 7}  # nodes 2 and 3
    assert set(AuxFreeRouter(4, 8, 4).select(scores)[0].tolist()) == {0, 2, 4, 5}  # unlimited: 3 nodes
    router.bias[1] = 1.0  # node scores use s + b (DeepSeek-V3's released code): node 0's sum becomes 1.95
    assert set(router.select(scores)[0].tolist()) == {0, 1, 4, 5}  # nodes 0 and 2


def test_node_limited_routing_reaches_at_most_topk_groups_nodes():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    limited = AuxFreeRouter(16, 16, 4, n_groups=4, topk_groups=2)
    free = AuxFreeRouter(16, 16, 4)
    free.load_state_dict(limited.state_dict())
    idx = limited(x).indices
    nodes = idx // 4  # [T, K]: 4 experts a node
    assert max(len(set(row)) for row in nodes.tolist()) == 2
    assert not torch.equal(idx.sort(-1).values, free(x).indices.sort(-1).values)  # the limit changed some tokens
    one_node = AuxFreeRouter(16, 16, 4, n_groups=1)
    one_node.load_state_dict(free.state_dict())
    torch.testing.assert_close(one_node(x).indices, free(x).indices)


def _dispatch_case(T, E, K, D, H, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    experts = RoutedExperts(E, D, H).to(dtype)
    x = torch.randn(T, D, generator=g).to(dtype)
    idx = torch.rand(T, E, generator=g).topk(K, dim=-1).indices
    idx[idx == E - 1] = 0  # expert E - 1 gets no token: empty groups must work (and get zero gradients)
    w = torch.rand(T, K, generator=g).to(dtype)
    return experts, x, idx, w, torch.randn(T, D, generator=g).to(dtype)


def _run(dispatch, experts, x, idx, w, grad):
    experts.zero_grad(set_to_none=True)
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = dispatch(x, idx, w, experts)
    out.backward(grad)
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in (x, w, experts.w1, experts.w2)]
    return out, grads


@pytest.mark.parametrize("backend", ["grouped_mm", "torch", "auto"])
@pytest.mark.parametrize("dtype, shape, atol, rtol", [
    # fp32: the same products summed in another order (torch's grouped kernel, segment matmuls)
    (torch.float32, (37, 7, 3, 16, 12), 1e-5, 1e-5),
    # bf16: each GEMM rounds its output to 8 mantissa bits in both paths, at different points: ~2^-8 relative
    (torch.bfloat16, (37, 7, 3, 16, 16), 3e-2, 3e-2),
])
def test_grouped_dispatch_equals_the_loop(backend, dtype, shape, atol, rtol):
    experts, x, idx, w, grad = _dispatch_case(*shape, dtype)
    ref, ref_grads = _run(loop_dispatch, experts, x, idx, w, grad)
    out, grads = _run(dispatcher(backend), experts, x, idx, w, grad)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    for name, a, b in zip(("x", "weights", "w1", "w2"), grads, ref_grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"grad of {n}: {m}")
    assert grads[2][-1].abs().max() == 0  # the empty expert


def test_misaligned_shapes_fall_back_to_the_torch_loop_and_grouped_mm_says_why():
    experts, x, idx, w, grad = _dispatch_case(9, 5, 2, 6, 5, torch.float32)  # 24- and 40-byte rows
    reason = grouped_mm_unsupported(x, experts.w1)
    assert reason and "16-byte" in reason
    with pytest.raises(ValueError, match="16-byte"):
        grouped_dispatch(x, idx, w, experts, backend="grouped_mm")
    ref, ref_grads = _run(loop_dispatch, experts, x, idx, w, grad)
    out, grads = _run(dispatcher("auto"), experts, x, idx, w, grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend must be"):
        dispatcher("cutlass")


def test_auto_backend_is_chosen_per_gemm_when_only_the_hidden_width_is_misaligned(monkeypatch):
    # fp32, D = 8 and H = 6: w1 [E, 8, 12] has 16-byte rows, w2 [E, 6, 8] takes a [T*K, 6] operand of 24-byte rows,
    # so grouped_mm runs the first GEMM and the torch loop the second (rather than grouped_mm raising)
    experts, x, idx, w, grad = _dispatch_case(11, 5, 2, 8, 6, torch.float32)
    assert grouped_mm_unsupported(x, experts.w1) is None
    assert "16-byte" in grouped_mm_unsupported(torch.empty(22, 6), experts.w2)
    ran = []
    for name, gemm in list(grouped.GEMMS.items()):
        monkeypatch.setitem(grouped.GEMMS, name, lambda a, b, offs, n=name, f=gemm: ran.append(n) or f(a, b, offs))
    out, grads = _run(dispatcher("auto"), experts, x, idx, w, grad)
    assert ran == ["grouped_mm", "torch"]
    ref, ref_grads = _run(loop_dispatch, experts, x, idx, w, grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sort_by_expert_groups_every_slot_once():
    idx = torch.tensor([[2, 0], [1, 2], [2, 1]])
    order, tok, offs = sort_by_expert(idx, 4)
    assert offs.tolist() == [1, 3, 6, 6] and offs.dtype == torch.int32
    assert idx.reshape(-1)[order].tolist() == [0, 1, 1, 2, 2, 2] and tok.tolist() == [0, 1, 2, 0, 1, 2]


def test_moe_layer_with_grouped_dispatch_equals_the_loop_layer():
    torch.manual_seed(0)
    cfg = MoEConfig(dim=16, n_routed=8, top_k=3, expert_hidden=8, n_shared=2)
    loop = MoE(cfg, AuxFreeRouter(16, 8, 3))
    grouped = MoE(cfg, AuxFreeRouter(16, 8, 3), dispatch=dispatcher("auto"))
    grouped.load_state_dict(loop.state_dict())
    x = torch.randn(2, 5, 16)
    (a, ra), (b, rb) = loop(x), grouped(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(ra.indices, rb.indices)
    with pytest.raises(ValueError, match="router routes top-2 of 8"):
        MoE(cfg, AuxFreeRouter(16, 8, 2))


def test_stream_is_seeded_and_skewed():
    cfg = LMConfig(seq=32)
    a, b = stream(cfg, 64, seed=1), stream(cfg, 64, seed=1)
    assert torch.equal(a, b) and a.shape == (64, 33) and not torch.equal(a, stream(cfg, 64, seed=2))
    freq = torch.bincount(a.reshape(-1), minlength=cfg.vocab).sort(descending=True).values
    assert freq[:8].sum() > 8 * freq.sum() / cfg.vocab * 4  # the 8 commonest tokens: over 4x their uniform share


@pytest.mark.parametrize("router", [RouterConfig("softmax_aux"), RouterConfig("aux_free", gamma=0.01),
                                    RouterConfig("sigmoid_aux")])
def test_train_returns_per_step_loads_of_every_routed_slot(router):
    cfg = LMConfig(dim=16, layers=2, heads=2, n_routed=4, top_k=2, expert_hidden=8, seq=8, batch=2)
    out = train(cfg, router, steps=3, eval_seqs=4)
    assert out["loads"].shape == (3, 2, 4)
    assert (out["loads"].sum(-1) == cfg.batch * cfg.seq * cfg.top_k).all()
    assert out["eval_load"].sum().item() == 4 * cfg.seq * cfg.top_k * cfg.layers
    assert len(out["losses"]) == 3 and out["eval_loss"] > 0
    assert (torch.tensor(out["aux_losses"]) > 0).all() == (router.kind != "aux_free")
