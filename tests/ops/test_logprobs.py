import math

import torch

from longact_pl.ops.logprobs import completion_logprobs, token_entropy, token_logprobs


def test_token_logprobs_hand_values():
    # logits [0, ln 3] -> probs [1/4, 3/4]; at T=1, log p(token 1) = ln(3/4), log p(token 0) = ln(1/4)
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    got = token_logprobs(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(got, torch.tensor([[math.log(0.75), math.log(0.25)]]))
    # T = 2 halves the logits: [0, ln 3 / 2] -> p1 = sqrt3 / (1 + sqrt3)
    got_t = token_logprobs(logits[:, :1], torch.tensor([[1]]), temperature=2.0)
    torch.testing.assert_close(got_t, torch.tensor([[math.log(math.sqrt(3) / (1 + math.sqrt(3)))]]))


def test_entropy_of_uniform_is_log_vocab():
    torch.testing.assert_close(token_entropy(torch.zeros(1, 2, 8)), torch.full((1, 2), math.log(8)))


def test_left_padded_rows_match_unpadded(tiny):
    model = tiny.model.eval()
    torch.manual_seed(0)
    short = torch.randint(10, 1000, (1, 6))
    long = torch.randint(10, 1000, (1, 9))
    pad = tiny.tokenizer.pad_token_id
    batch = torch.cat([torch.cat([torch.full((1, 3), pad), short], 1), long])  # [2, 9]
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    got, ent = completion_logprobs(model, batch, mask, completion_width=4, with_entropy=True)
    for row, seq in ((0, short), (1, long)):
        full = model(seq).logits[:, -5:-1]  # logits predicting the last 4 tokens
        want = torch.log_softmax(full.float(), -1).gather(-1, seq[:, -4:, None]).squeeze(-1)
        torch.testing.assert_close(got[row : row + 1], want, atol=1e-5, rtol=1e-5)
    assert ent.shape == (2, 4) and (ent > 0).all()
