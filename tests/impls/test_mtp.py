"""Multi-token prediction: D=0 is the plain model, the loss is DeepSeek-V3's eqs. 24-25, caches equal full forwards,
acceptance is counted right on models whose answers are known, and speculative decoding emits greedy's tokens."""

import pytest
import torch

from impls.mtp.data import Language, LanguageConfig, windows
from impls.mtp.mtp import MTPConfig, MTPModel, mtp_loss
from impls.mtp.reference import LMConfig, TransformerLM, lm_loss
from impls.mtp.speculative import acceptance_rate, greedy_decode, speculative_decode
from impls.mtp.train import TrainConfig, train, trained

CFG = LMConfig(vocab=23, d_model=24, n_heads=2, n_layers=2)


def _tokens(batch, length, seed=0, vocab=CFG.vocab):
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_depth_zero_is_the_plain_model_exactly():
    torch.manual_seed(0)
    plain = TransformerLM(CFG)
    torch.manual_seed(0)
    model = MTPModel(CFG, MTPConfig(depth=0))
    tokens = _tokens(3, 11)  # odd length
    logits, depth_logits = model(tokens[:, :-1])
    assert depth_logits == [] and torch.equal(logits, plain(tokens[:, :-1]))
    loss, main, per_depth = mtp_loss(model, tokens)
    ref = lm_loss(plain, tokens)
    assert per_depth == [] and torch.equal(loss, ref) and torch.equal(main, ref)
    loss.backward()
    ref.backward()
    for (name, p), q in zip(model.main.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("depth", [1, 2])
def test_modules_leave_the_main_head_alone(depth):
    torch.manual_seed(0)
    plain = TransformerLM(CFG)
    torch.manual_seed(0)
    model = MTPModel(CFG, MTPConfig(depth=depth))
    tokens = _tokens(2, 9)
    logits, depth_logits = model(tokens)
    assert torch.equal(logits, plain(tokens))
    assert [tuple(x.shape) for x in depth_logits] == [(2, 9 - k, CFG.vocab) for k in range(1, depth + 1)]


@pytest.mark.parametrize("depth, lam", [(1, 0.3), (2, 0.1), (3, 1.0)])
def test_loss_is_deepseek_v3_eqs_24_25(depth, lam):
    torch.manual_seed(1)
    model = MTPModel(CFG, MTPConfig(depth=depth, lam=lam)).double()
    tokens = _tokens(2, 10)  # T = 9 inputs
    B, T = 2, 9
    loss, main, per_depth = mtp_loss(model, tokens)
    logits, depth_logits = model(tokens[:, :-1])
    # term by term: L_MTP^k = -1/T sum_{i=2+k}^{T+1} log P_i^k[t_i], with P_i^k read at position i-k-1 (1-based)
    want = []
    for k, lk in enumerate(depth_logits, start=1):
        logp = lk.log_softmax(-1)
        total = sum(-logp[b, i - k - 2, tokens[b, i - 1]] for b in range(B) for i in range(2 + k, T + 2))
        want.append(total / (B * T))
    logp = logits.log_softmax(-1)
    want_main = sum(-logp[b, i - 2, tokens[b, i - 1]] for b in range(B) for i in range(2, T + 2)) / (B * T)
    # float64 throughout: only summation order differs
    torch.testing.assert_close(main, want_main, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.stack(per_depth), torch.stack(want), rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, want_main + lam / depth * sum(want), rtol=1e-12, atol=0)


def test_each_depth_keeps_the_causal_chain():
    # depth k at position i reads t_1..t_{i+k}: changing later tokens leaves it unchanged
    torch.manual_seed(2)
    model = MTPModel(CFG, MTPConfig(depth=2))
    a = _tokens(1, 12)
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % CFG.vocab  # t_9.. changed
    for k, (la, lb) in enumerate(zip(model(a)[1], model(b)[1]), start=1):
        keep = 8 - k  # positions i <= 8 - k read only t_1..t_8
        torch.testing.assert_close(la[:, :keep], lb[:, :keep], rtol=0, atol=0)
        assert not torch.allclose(la[:, keep:], lb[:, keep:])


@pytest.mark.parametrize("j", [3, 6, 9])
def test_depth_k_at_position_i_reads_token_i_plus_k(j):
    """Eq. 21: module k at position i combines h_i^{k-1} with Emb(t_{i+k}), so it has read t_1..t_{i+k} and no more.
    Changing exactly t_j then changes depth k's output at i = j - k (the first position to read it) and none before;
    a module reading t_{i+k-1} would leave i = j - k unchanged, one reading t_{i+k+1} would change i = j - k - 1.
    0-based here: depth 0 is the main head, and out[k][:, i] is depth k at token index i."""
    torch.manual_seed(4)
    model = MTPModel(CFG, MTPConfig(depth=3))
    a = _tokens(1, 12)
    b = a.clone()
    b[0, j] = (b[0, j] + 1) % CFG.vocab
    with torch.no_grad():
        out_a, out_b = [[main, *depths] for main, depths in (model(a), model(b))]
    for k, (la, lb) in enumerate(zip(out_a, out_b)):
        first = j - k  # the first position of depth k that reads t_j
        torch.testing.assert_close(la[:, :first], lb[:, :first], rtol=0, atol=0)
        assert (la[:, first] - lb[:, first]).abs().max() > 1e-3, f"depth {k} at position {first} ignored t_{j}"


@pytest.mark.parametrize("chunk, atol", [(1, 1e-5), (2, 1e-5), (3, 1e-5)])  # fp32: a different reduction order
def test_kv_cache_equals_the_full_forward(chunk, atol):
    torch.manual_seed(3)
    model = MTPModel(CFG, MTPConfig(depth=1))
    tokens = _tokens(2, 13)
    with torch.no_grad():
        full_h = model.main.hidden(tokens)
        full_draft = model.mtp[0](full_h[:, :-1], model.main.embed(tokens[:, 1:]))
        cache, mcache = model.main.new_cache(2, 13), model.mtp[0].new_cache(2, 12)
        hs = [model.main.hidden(tokens[:, i:i + chunk], cache) for i in range(0, 13, chunk)]
        h = torch.cat(hs, dim=1)
        drafts = [model.mtp[0](h[:, i:i + chunk], model.main.embed(tokens[:, i + 1:i + 1 + chunk]), mcache)
                  for i in range(0, 12, chunk)]
    torch.testing.assert_close(h, full_h, atol=atol, rtol=0)
    torch.testing.assert_close(torch.cat(drafts, dim=1), full_draft, atol=atol, rtol=0)


def _counter(vocab: int, perm: list[int]) -> MTPModel:
    """A hand-set model whose main head predicts t+1 (mod vocab) after t and whose MTP draft after t_{i+1} is
    perm[t_{i+1}] + 1: one-hot embeddings, blocks silenced (zero output projections), permutation matrices."""
    d = -(-vocab // 4) * 4  # two heads of an even width; channels past the vocab stay 0
    cfg = LMConfig(vocab=vocab, d_model=d, n_heads=2, n_layers=1)
    model = MTPModel(cfg, MTPConfig(depth=1))
    eye = torch.eye(vocab, d)  # [V, d]: token t -> channel t
    with torch.no_grad():
        for block in [*model.main.blocks, model.mtp[0].block]:
            block.proj.weight.zero_()
            block.fc2.weight.zero_()
        model.main.embed.weight.copy_(eye)
        model.main.head.weight.copy_(eye.roll(1, dims=0))  # row t+1 reads channel t
        moved = torch.zeros(d, d)
        moved[perm, list(range(vocab))] = 1  # channel t -> channel perm[t]
        model.mtp[0].proj.weight.copy_(torch.cat([torch.zeros(d, d), moved], dim=1))  # reads Emb(t_{i+1}) only
    return model.eval()


V = 18
FIXED = [t % 3 == 0 for t in range(V)]  # the draft is right after these tokens only
_MOVED = [t for t in range(V) if not FIXED[t]]
PERM = [t if FIXED[t] else _MOVED[(_MOVED.index(t) + 1) % len(_MOVED)] for t in range(V)]


def test_acceptance_on_known_sequences():
    model = _counter(V, PERM)
    tokens = _tokens(4, 30, seed=5, vocab=V)
    # position i drafts perm[t_{i+1}] + 1 where the main model says t_{i+1} + 1: accepted iff t_{i+1} is fixed
    want = torch.tensor(FIXED)[tokens[:, 1:]].float().mean().item()
    assert 0 < want < 1
    assert acceptance_rate(model, tokens) == pytest.approx(want, abs=1e-7)
    assert acceptance_rate(_counter(V, list(range(V))), tokens) == 1.0


@pytest.mark.parametrize("start, n", [(0, 20), (4, 21), (17, 1), (5, 2)])
def test_speculative_decoding_counts_what_it_accepts(start, n):
    model = _counter(V, PERM)
    prompt = torch.tensor([[7, 2, start]])
    out, stats = speculative_decode(model, prompt, n)
    counting = torch.tensor([[(start + j) % V for j in range(1, n + 1)]])
    assert torch.equal(out, torch.cat([prompt, counting], dim=1))
    assert torch.equal(out, greedy_decode(model.main, prompt, n))
    c, emitted, drafted, accepted = (start + 1) % V, 1, 0, 0  # after the prefill: c = x_{P+1}, its draft pending
    while emitted < n:
        drafted += 1
        if FIXED[c]:  # accepted: c+1 and c+2 for one forward
            accepted, emitted, c = accepted + 1, emitted + 2, (c + 2) % V
        else:
            emitted, c = emitted + 1, (c + 1) % V
    assert (stats.drafted, stats.accepted, stats.main_forwards) == (drafted, accepted, drafted + 1)


@pytest.fixture(scope="module")
def small_trained():
    lang = LanguageConfig(vocab=32, phrases=12, seed=3)
    cfg = TrainConfig(model=LMConfig(vocab=32, d_model=32, n_heads=2, n_layers=2), mtp=MTPConfig(depth=1),
                      language=lang, seq=25, batch=16, steps=60, train_tokens=20_000)
    return train(cfg)[0], Language(lang).sequences(4, 20, seed=9)


@pytest.mark.parametrize("n", [1, 9, 24])
def test_speculative_output_is_greedy_and_drafts_are_the_mtp_head(small_trained, n):
    model, text = small_trained
    total_drafted = 0
    for row in text:
        prompt = row[None, :6]
        out, stats = speculative_decode(model, prompt, n)
        assert torch.equal(out, greedy_decode(model.main, prompt, n))
        # replay: every draft is depth 1's argmax over the final sequence, accepted iff it is the next token
        with torch.no_grad():
            drafts = model(out)[1][0].argmax(-1)[0]  # [P + n - 1]: drafts[j] is the draft for token j + 2
        i, emitted, drafted, accepted = prompt.shape[1], 1, 0, 0  # i: index of the committed, unverified token
        while emitted < n:
            drafted += 1
            hit = bool(drafts[i - 1] == out[0, i + 1])
            accepted, emitted, i = accepted + hit, emitted + 1 + hit, i + 1 + hit
        assert (stats.drafted, stats.accepted) == (drafted, accepted)
        total_drafted += drafted
    assert total_drafted > 0 or n == 1


def test_trained_weights_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    lang = LanguageConfig(vocab=16, phrases=4, min_len=2, max_len=3)
    cfg = TrainConfig(model=LMConfig(vocab=16, d_model=16, n_heads=2, n_layers=1), mtp=MTPConfig(depth=1),
                      language=lang, seq=9, batch=4, steps=3, train_tokens=200)
    first, curves = trained(cfg)
    monkeypatch.setattr("impls.mtp.train.train", lambda *a, **k: pytest.fail("retrained a cached config"))
    again, curves_again = trained(cfg)
    assert curves == curves_again and len(curves["main_loss_curve"]) == 3
    for (name, p), q in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name


def test_language_is_seeded_and_in_range():
    lang = Language(LanguageConfig(vocab=20, phrases=6))
    a, b = lang.stream(500, seed=1), lang.stream(500, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, lang.stream(500, seed=2))
    assert a.min() >= 0 and a.max() < 20
    w = windows(a, 3, 7, torch.Generator().manual_seed(0))
    assert w.shape == (3, 7) and any(torch.equal(w[0], a[s:s + 7]) for s in range(494))
    # noise-free text is phrases chained along the grammar's transitions: every bigram is inside a phrase or joins a
    # phrase's last token to a successor's first
    clean = Language(LanguageConfig(vocab=20, phrases=6, noise=0.0))
    allowed = {pair for p in clean.phrases for pair in zip(p, p[1:])}
    allowed |= {(clean.phrases[p][-1], clean.phrases[q][0]) for p in range(6) for q in clean.next[p]}
    text = clean.stream(400, seed=4).tolist()
    assert all(pair in allowed for pair in zip(text, text[1:]))
    noisy = Language(LanguageConfig(vocab=20, phrases=6, noise=0.3)).stream(400, seed=4).tolist()
    assert not all(pair in allowed for pair in zip(noisy, noisy[1:]))


@pytest.mark.parametrize("make, match", [
    (lambda: MTPConfig(depth=-1), "depth"),
    (lambda: MTPConfig(depth=1.5), "depth"),
    (lambda: MTPConfig(lam=-0.1), "lambda"),
    (lambda: LMConfig(d_model=30, n_heads=4), "heads"),
    (lambda: LanguageConfig(successors=5, phrases=4), "successors"),
    (lambda: TrainConfig(mtp=MTPConfig(depth=3), seq=4), "depth"),
    (lambda: mtp_loss(MTPModel(CFG, MTPConfig(depth=2)), _tokens(2, 3)), "too short"),
    (lambda: mtp_loss(MTPModel(CFG, MTPConfig(depth=0)), _tokens(2, 1)), "too short"),
    (lambda: speculative_decode(MTPModel(CFG, MTPConfig(depth=0)), _tokens(1, 3), 4), "depth"),
    (lambda: speculative_decode(MTPModel(CFG, MTPConfig(depth=1)), _tokens(2, 3), 4), "one prompt"),
    (lambda: greedy_decode(TransformerLM(CFG), _tokens(1, 3), 0), ">= 1"),
])
def test_bad_input_is_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
