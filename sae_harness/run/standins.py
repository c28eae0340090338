"""Offline stand-ins for what lives on the Hugging Face hub: google/gemma-2-2b's architecture
(its real sizes, random weights) and a character-level tokenizer. Used by the tests and by
benchmarks/gemma2_cost.py; a run never uses them unless pointed at a folder they were saved to."""

import torch

# google/gemma-2-2b's config.json, the fields a Gemma2Config reads (the hub is not reachable here:
# these are the values transformers' Gemma2Config defaults to and TransformerLens's own table states).
GEMMA_2_2B = dict(
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    hidden_size=2304,
    intermediate_size=9216,
    max_position_embeddings=8192,
    num_attention_heads=8,
    num_hidden_layers=26,
    num_key_value_heads=4,
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-06,
    rope_theta=10000.0,
    sliding_window=4096,
    vocab_size=256000,
)


def char_tokenizer(add_bos: bool = False):
    """Character-level stand-in for the Gemma tokenizer: 0 pad, 1 eos, 2 bos, 3 unk, then one id per
    character 32-254. add_bos: encoding prepends BOS, as Gemma's tokenizer does (TransformerLens needs
    it to adopt the tokenizer as it is)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({chr(c): 4 + c - 32 for c in range(32, 255)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    special = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    extra = dict(add_bos_token=True, name_or_path="tiny-bytes") if add_bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special, **extra)


def random_gemma2_2b(device: torch.device, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """google/gemma-2-2b's architecture at its real size with random weights, built on device."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma2ForCausalLM(Gemma2Config(**GEMMA_2_2B, dtype=dtype))
    return model.to(dtype).eval()
