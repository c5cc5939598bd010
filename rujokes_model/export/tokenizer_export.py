"""Our byte-level BPE as a transformers `PreTrainedTokenizerFast` directory, and as GGUF vocabulary lists."""
from __future__ import annotations

import json
from pathlib import Path

from ..tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, ByteLevelBPETokenizer


def with_bos_post_processor(tokenizer: ByteLevelBPETokenizer):
    """A copy of the backend whose encode adds <bos> in front, as `ByteLevelBPETokenizer.encode` does by hand.

    Ours prepends the id itself (tokenizer.json has no post-processor); other runtimes only see
    tokenizer.json, so the rule has to live there.
    """
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_str(tokenizer.backend.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.bos_token_id)])
    return backend


def save_transformers_tokenizer(
    tokenizer: ByteLevelBPETokenizer, out_dir: str | Path, *, model_max_length: int
) -> Path:
    """tokenizer.json (with the <bos> post-processor), tokenizer_config.json and special_tokens_map.json."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=with_bos_post_processor(tokenizer), bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: generate() would reject them
        padding_side="left",                 # batched generation wants every prompt to end in the same column
        clean_up_tokenization_spaces=False,  # byte-level decoding is exact; "clean-up" would edit jokes' spaces
        split_special_tokens=True)  # as ours: text that spells "<eos>" is that text, not the control token
    fast.save_pretrained(str(out_dir))
    out = Path(out_dir)
    # transformers 5 records its "TokenizersBackend"; older releases (and vLLM pinned to them) know this class
    # by its old name, which transformers 5 still maps to the same class.
    config_path = out / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special_map = out / "special_tokens_map.json"
    if not special_map.exists():  # newer transformers keep these in tokenizer_config.json only
        special_map.write_text(json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2) + "\n",
                               encoding="utf-8")
    return out


def gguf_vocabulary(tokenizer: ByteLevelBPETokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges "a b") as llama.cpp's "gpt2" BPE tokenizer reads them."""
    from gguf import TokenType

    data = json.loads(tokenizer.backend.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    for added in data.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    tokens = [""] * tokenizer.vocab_size
    for token, index in vocab.items():
        tokens[index] = token
    types = [int(TokenType.CONTROL if token in SPECIAL_TOKENS else TokenType.NORMAL) for token in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, types, merges
