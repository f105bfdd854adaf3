import torch
from test_harness import setup, result, _loglik  # noqa
def test_probe(setup, result):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM
    _, model_dir, tok_dir, items, _ = setup
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = GPTNeoXForCausalLM.from_pretrained(model_dir).eval()
    c1 = c2 = 0
    for it in items["choice"]:
        ctx = tok.encode(it["context"], add_special_tokens=False)
        a = [_loglik(model, ctx, tok.encode(" " + c)) for c in it["choices"]]
        b = [_loglik(model, [tok.eos_token_id] + ctx, tok.encode(" " + c)) for c in it["choices"]]
        c1 += a.index(max(a)) == it["label"]; c2 += b.index(max(b)) == it["label"]
    print("\nRESULT", result, c1, c2, len(items["choice"]))
