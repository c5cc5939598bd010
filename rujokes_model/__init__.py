"""rujokes_model: a small decoder-only Transformer for Russian jokes (pure library: tensors and files)."""
from .config import SIZES, ModelConfig
from .generation import generate, iter_generate
from .model import TransformerForCausalLM
from .pretrained import bundled_sizes, pretrained_path
from .streaming import IncrementalDecoder, stream_text
from .tokenizer import ByteLevelBPETokenizer

__all__ = [
    "SIZES", "ByteLevelBPETokenizer", "IncrementalDecoder", "ModelConfig", "TransformerForCausalLM",
    "bundled_sizes", "generate", "iter_generate", "pretrained_path", "stream_text",
]
