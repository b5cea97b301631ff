"""Reply text at a cut: the bytes of an unfinished multi-byte character are dropped, as vLLM's
detokenizer (Hugging Face's DecodeStream) drops them, and a stream says the same as a call."""

from __future__ import annotations

from conftest import build_tiny, tiny_tokenizer

from actsteer.runtime.replies import decode_reply


def test_an_unfinished_character_at_the_end_is_dropped_and_a_whole_one_kept():
    tok = tiny_tokenizer()  # one token per byte: any cut can split a character
    ids = tok.encode("café 👍")
    assert decode_reply(tok, ids) == "café 👍"
    for cut in range(1, 4):  # inside the emoji's four bytes
        assert decode_reply(tok, ids[:-cut]) == "café "
    assert decode_reply(tok, tok.encode("caf") + tok.encode("é")[:1]) == "caf"


def test_capped_replies_never_end_in_a_replacement_character_and_streams_agree():
    sm = build_tiny("llama", seed=5)  # random bytes: many replies stop inside a character
    prompts = [f"Prompt number {i}" for i in range(12)]
    gens = sm.generate_batch_detailed(prompts, None, max_new_tokens=7)
    assert not any(g.text.endswith("\ufffd") for g in gens), [g.text for g in gens]
    assert any(len(g.token_ids) == 7 for g in gens)
    for prompt, g in zip(prompts[:4], gens):
        assert "".join(sm.stream(prompt, None, max_new_tokens=7)) == g.text
