"""The language model as SAEBench sees it: the locally loaded HF model handed to TransformerLens,
with a TransformerLens config built from the model's own HF config."""

import contextlib

from sae_harness.evals.context import EvalContext


def load_tl_model(hf_model, tokenizer, ctx: EvalContext):
    """Hand the locally loaded (GGUF, dequantized) HF model to TransformerLens; no hub. A Gemma 2 /
    Gemma 3 model gets the TransformerLens config built from its own HF config (tl_config_dict), so a
    model of any size converts, not only one whose sizes match ctx.model_name's published ones."""
    from unittest import mock

    from sae_bench.sae_bench_utils import general_utils
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config  # TransformerLens refuses quantized configs
    patch = contextlib.nullcontext()
    if hf_model.config.model_type in ("gemma2", "gemma3_text"):
        cfg_dict = tl_config_dict(ctx.model_name, hf_model.config)
        if cfg_dict["original_architecture"] != type(hf_model).__name__:
            raise ValueError(
                f"{ctx.model_name} is a {cfg_dict['original_architecture']} in TransformerLens, the model is a {type(hf_model).__name__}"
            )
        # from_pretrained reads its config from this one function; everything else (weights, dtype, device) stays TransformerLens's own
        patch = mock.patch.object(loading, "convert_hf_model_config", lambda name, **kwargs: dict(cfg_dict))
    with patch:
        return HookedTransformer.from_pretrained_no_processing(
            ctx.model_name,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=ctx.device,
            dtype=general_utils.str_to_dtype(ctx.llm_dtype),
        )


TL_ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def tl_config_dict(model_name: str, hf_config) -> dict:
    """TransformerLens's config dict for a Gemma 2 / Gemma 3 HF config: TransformerLens's own entry
    for model_name (built offline for Gemma names) with every size and setting the HF config states
    taken from the HF config: widths, layers, sliding window and which layers slide, soft-caps,
    attention scale, RoPE bases. For the published models the two agree (tests/test_gemma2.py)."""
    from transformer_lens import loading_from_pretrained as loading

    c = hf_config
    rope = c.rope_parameters  # Gemma 2: one dict; Gemma 3: one per layer type
    rope_global, rope_local = rope.get("full_attention", rope), rope.get("sliding_attention", rope)
    if {rope_global.get("rope_type", "default"), rope_local.get("rope_type", "default")} != {"default"}:
        raise ValueError(f"RoPE scaling {rope} is not converted to TransformerLens here")
    cfg = loading.convert_hf_model_config(model_name)
    cfg.update(
        d_model=c.hidden_size,
        d_head=c.head_dim,
        n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        d_vocab=c.vocab_size,
        n_ctx=min(cfg["n_ctx"], c.max_position_embeddings),
        eps=c.rms_norm_eps,
        act_fn=c.hidden_activation,
        window_size=c.sliding_window,
        attn_types=[TL_ATTN_TYPES[t] for t in c.layer_types],
        attn_scale=c.query_pre_attn_scalar**0.5,  # scores are divided by it; HF multiplies by query_pre_attn_scalar**-0.5
        attn_scores_soft_cap=c.attn_logit_softcapping or -1.0,  # -1: off
        output_logits_soft_cap=c.final_logit_softcapping or -1.0,
        rotary_base=rope_global["rope_theta"],
        rotary_base_local=rope_local["rope_theta"] if rope_local["rope_theta"] != rope_global["rope_theta"] else None,  # None: one base
    )
    return cfg
