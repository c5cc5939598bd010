"""Evaluation: bits per character and loss per token against a hand computation, and the eval windows."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rujokes_model import ModelConfig, TransformerForCausalLM
from tests.model_helpers import tiny_tokenizer
from trainer.evaluate import evaluate_texts, total_nll
from trainer.packing import encode_documents, eval_windows

pytestmark = pytest.mark.usefixtures("single_torch_thread_for_module")

TEXTS = ["Штирлиц шёл по лесу.", "— Ты кто?\n— Я ёж. 🦔", "Вовочка"]
LONG_TEXTS = ["Поручик Ржевский пришёл на бал и сказал: господа, а не выпить ли нам шампанского?",
              "Ёжик", "Мужик съел лёд!"]




def toy_model(position: str) -> TransformerForCausalLM:
    """A seeded 1-layer model; init_std 0.1 gives logits far from uniform, so the sums carry information."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tiny_tokenizer().vocab_size, n_layer=1, d_model=32, n_head=2, n_kv_head=1,
                         d_ff=64, max_seq_len=64, position=position, init_std=0.1)
    return TransformerForCausalLM(config).eval()


def nll_by_hand(model: TransformerForCausalLM, texts: list[str]) -> tuple[float, int]:
    """Summed -log p(next token) over every token after <bos> (incl. <eos>): one plain forward per text."""
    tokenizer = tiny_tokenizer()
    nll, predicted = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text, add_bos=True, add_eos=True)])
            log_probs = F.log_softmax(model(ids[:, :-1]).double(), dim=-1)[0]
            nll -= log_probs.gather(1, ids[0, 1:, None]).sum().item()
            predicted += ids.shape[1] - 1
    return nll, predicted


@pytest.mark.parametrize("position", ["alibi", "rope"])
def test_bits_per_char_is_summed_nll_in_bits_over_characters(position):
    model = toy_model(position)
    result = evaluate_texts(model, tiny_tokenizer(), TEXTS)
    nll, _ = nll_by_hand(model, TEXTS)
    assert result.chars == sum(len(text) for text in TEXTS)
    assert result.bits_per_char == pytest.approx(nll / math.log(2) / result.chars, abs=1e-5)


@pytest.mark.parametrize("position", ["alibi", "rope"])
def test_loss_per_token_is_nll_over_predicted_tokens(position):
    model = toy_model(position)
    result = evaluate_texts(model, tiny_tokenizer(), TEXTS)
    nll, predicted = nll_by_hand(model, TEXTS)
    assert result.tokens == predicted
    assert result.loss_per_token == pytest.approx(nll / predicted, abs=1e-5)
    assert result.chars_per_token == pytest.approx(result.chars / predicted)


def test_batching_and_padding_do_not_change_the_result():
    model = toy_model("alibi")
    one_by_one = evaluate_texts(model, tiny_tokenizer(), TEXTS + LONG_TEXTS, batch_size=1)
    batched = evaluate_texts(model, tiny_tokenizer(), TEXTS + LONG_TEXTS, batch_size=32)
    assert batched.bits_per_char == pytest.approx(one_by_one.bits_per_char, abs=1e-5)


def test_long_jokes_are_scored_token_by_token_in_windows():
    documents = encode_documents(tiny_tokenizer(), LONG_TEXTS)
    assert max(len(doc) for doc in documents) > 3 * 8
    result = evaluate_texts(toy_model("rope"), tiny_tokenizer(), LONG_TEXTS, seq_len=8)
    assert result.tokens == sum(len(doc) - 1 for doc in documents)


def test_evaluation_restores_the_models_training_mode():
    model = toy_model("alibi").train()
    total_nll(model, [[1, 5, 6, 2]])
    assert model.training


def test_evaluating_no_texts_is_an_error():
    with pytest.raises(ValueError, match="no validation texts"):
        evaluate_texts(toy_model("alibi"), tiny_tokenizer(), [])


# ---------------------------------------------------------------- eval windows

SEQ_LEN = 8


def numbered_documents(lengths: list[int]) -> list[list[int]]:
    """Documents whose tokens are all distinct numbers, so every predicted token can be traced back."""
    documents, next_token = [], 0
    for length in lengths:
        documents.append(list(range(next_token, next_token + length)))
        next_token += length
    return documents


LENGTHS = [2, 5, SEQ_LEN, SEQ_LEN + 1, SEQ_LEN + 2, 2 * SEQ_LEN + 1, 3 * SEQ_LEN + 5]


def test_eval_windows_predict_every_token_after_bos_exactly_once():
    documents = numbered_documents(LENGTHS)
    windows = eval_windows(documents, SEQ_LEN).tokens
    predicted = [token for window in windows for token in window[1:]]
    assert predicted == [token for doc in documents for token in doc[1:]]
    assert len(predicted) == sum(length - 1 for length in LENGTHS)


def test_eval_windows_fit_the_model_input_and_stay_inside_one_document():
    documents = numbered_documents(LENGTHS)
    owner = {token: index for index, doc in enumerate(documents) for token in doc}
    for window in eval_windows(documents, SEQ_LEN).tokens:
        assert 2 <= len(window) <= SEQ_LEN + 1
        assert len({owner[token] for token in window}) == 1


def test_total_nll_counts_one_target_per_token_after_bos():
    documents = encode_documents(tiny_tokenizer(), LONG_TEXTS + TEXTS)
    _, count = total_nll(toy_model("alibi"), eval_windows(documents, SEQ_LEN).tokens, batch_size=4)
    assert count == sum(len(doc) - 1 for doc in documents)

