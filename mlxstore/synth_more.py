"""Tiny configs of the other MoE architectures mlx-lm ships, beside synth.ARCHITECTURES.

Why: the core fixtures (synth.ARCHITECTURES) run through every test; these run through
one, tests/test_mlxlm_architectures.py, which packs each, loads it plain and streamed,
and compares logits with mlx-lm's bit for bit. Together the two tables cover every
module of mlx_lm.models with routed experts (that test fails when one is neither here
nor there). Same rules as the core table: 8-16 experts, top-k 1-4, expert widths of 128,
every matmul's inner dimension a multiple of 64 and larger than 64.
"""

from __future__ import annotations

from typing import Any

MORE_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "phimoe": {
        "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128, "rope_scaling": None,
    },
    "granitemoe": {
        "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128, "logits_scaling": 4.0,
        "attention_multiplier": 0.03125, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
        "attention_bias": False,
    },
    "minimax": {
        "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128,
        "shared_intermediate_size": 0, "rotary_dim": 16, "use_qk_norm": True,
    },
    "bailing_moe": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "moe_intermediate_size": 128, "num_experts": 8,
        "num_shared_experts": 1, "norm_topk_prob": True, "num_experts_per_tok": 2, "n_group": 1,
        "topk_group": 1,
    },
    "dots1": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "moe_intermediate_size": 128,
        "n_routed_experts": 16, "n_shared_experts": 1, "norm_topk_prob": True, "num_experts_per_tok": 4,
        "routed_scaling_factor": 2.5, "scoring_func": "noaux_tc", "n_group": 1, "topk_group": 1,
    },
    "hunyuan": {
        "attention_bias": False, "moe_topk": 2, "num_experts": 8, "num_shared_expert": 1,
        "use_mixed_mlp_moe": True, "use_qk_norm": True, "use_cla": False, "cla_share_factor": 2,
        "moe_intermediate_size": 128, "rope_scaling": {"alpha": 1000.0, "factor": 1.0, "type": "dynamic"},
    },
    "llama4": {
        "text_config": {
            "model_type": "llama4_text", "attention_bias": False, "attention_chunk_size": 16, "head_dim": 32,
            "hidden_size": 128, "interleave_moe_layer_step": 1, "intermediate_size": 128,
            "intermediate_size_mlp": 256, "max_position_embeddings": 512, "num_attention_heads": 4,
            "num_experts_per_tok": 1, "num_hidden_layers": 4, "num_key_value_heads": 2,
            "num_local_experts": 8, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
            "use_qk_norm": True, "vocab_size": 512,
        },
    },
    "qwen3_5_moe": {
        "num_hidden_layers": 4, "full_attention_interval": 2, "linear_num_value_heads": 4,
        "linear_num_key_heads": 2, "linear_key_head_dim": 32, "linear_value_head_dim": 32,
        "linear_conv_kernel_dim": 4, "num_experts": 16, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
        "shared_expert_intermediate_size": 128, "moe_intermediate_size": 128,
        "rope_parameters": {
            "type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
    },
    "deepseek_v2": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_key_value_heads": 4, "n_routed_experts": 16,
        "n_shared_experts": 1, "num_experts_per_tok": 4, "moe_intermediate_size": 128, "n_group": 2,
        "topk_group": 1, "topk_method": "group_limited_greedy", "routed_scaling_factor": 1.0,
        "kv_lora_rank": 128, "q_lora_rank": 128, "qk_rope_head_dim": 32, "qk_nope_head_dim": 128,
        "v_head_dim": 64,
        "rope_scaling": {
            "type": "yarn", "factor": 1.0, "original_max_position_embeddings": 512, "beta_fast": 32,
            "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0,
        },
    },
    "lfm2_moe": {
        "num_hidden_layers": 3, "moe_intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2,
        "norm_topk_prob": True, "use_expert_bias": True, "num_dense_layers": 1, "norm_eps": 1e-05,
        "conv_bias": False, "conv_L_cache": 3, "layer_types": ["conv", "full_attention", "conv"],
    },
    "exaone_moe": {
        "num_hidden_layers": 3, "moe_intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2,
        "num_shared_experts": 1, "sliding_window": 16,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "is_moe_layer": [False, True, True], "n_group": 1, "topk_group": 1,
    },
    "afmoe": {
        "num_hidden_layers": 3, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "moe_intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2, "num_shared_experts": 1,
        "num_dense_layers": 1, "sliding_window": 16, "n_group": 1, "topk_group": 1,
    },
    "glm4_moe_lite": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_key_value_heads": 4, "n_routed_experts": 16,
        "n_shared_experts": 1, "num_experts_per_tok": 4, "moe_intermediate_size": 128, "kv_lora_rank": 128,
        "q_lora_rank": 128, "qk_rope_head_dim": 32, "qk_nope_head_dim": 128, "v_head_dim": 64,
        "num_nextn_predict_layers": 0, "max_position_embeddings": 512,
    },
    "Klear": {
        "attention_bias": False, "mlp_only_layers": [], "num_experts": 8, "num_experts_per_tok": 2,
        "decoder_sparse_step": 1, "n_shared_experts": 1, "moe_intermediate_size": 128, "norm_topk_prob": True,
    },
    "step3p5": {
        "num_hidden_layers": 3, "num_attention_groups": 2, "head_dim": 32,
        "layer_types": ["full_attention", "sliding_attention", "full_attention"], "sliding_window": 16,
        "moe_num_experts": 8, "moe_top_k": 2, "moe_intermediate_size": 128, "share_expert_dim": 128,
        "max_position_embeddings": 512,
    },
    "mimo_v2_flash": {
        "num_hidden_layers": 3, "num_experts_per_tok": 2, "hybrid_layer_pattern": [0, 1, 0],
        "moe_layer_freq": [0, 1, 1], "add_swa_attention_sink_bias": True,
        "add_full_attention_sink_bias": False, "sliding_window_size": 16, "moe_intermediate_size": 128,
        "n_shared_experts": None, "n_routed_experts": 8, "routed_scaling_factor": None,
        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "n_group": 1,
        "topk_group": 1, "layernorm_epsilon": 1e-05, "swa_rope_theta": 10000.0, "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 2, "v_head_dim": 32, "swa_head_dim": 32, "swa_v_head_dim": 32,
        "partial_rotary_factor": 0.5,
    },
    "longcat_flash": {
        "attention_method": "MLA", "zero_expert_type": "identity", "ffn_hidden_size": 256, "moe_topk": 2,
        "expert_ffn_hidden_size": 128, "n_routed_experts": 8, "zero_expert_num": 2, "num_layers": 2,
        "kv_lora_rank": 128, "q_lora_rank": 128, "qk_rope_head_dim": 32, "qk_nope_head_dim": 128,
        "v_head_dim": 64, "routed_scaling_factor": 1.0, "mla_scale_q_lora": True, "mla_scale_kv_lora": True,
        "attention_bias": False,
    },
    "solar_open": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 16, "n_shared_experts": 1,
        "num_experts_per_tok": 4, "moe_intermediate_size": 128, "routed_scaling_factor": 2.5,
        "norm_topk_prob": True, "partial_rotary_factor": 0.5, "use_qk_norm": False, "n_group": 1,
        "topk_group": 1,
    },
    "laguna": {
        "num_hidden_layers": 3, "sliding_window": 16,
        "layer_types": ["full_attention", "sliding_attention", "full_attention"],
        "mlp_layer_types": ["dense", "sparse", "sparse"], "num_experts": 8, "num_experts_per_tok": 2,
        "moe_intermediate_size": 128, "shared_expert_intermediate_size": 128, "gating": True,
    },
    "dbrx": {
        "d_model": 128, "n_layers": 2, "n_heads": 4,
        "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": 8, "moe_top_k": 2},
        "attn_config": {"kv_n_heads": 2, "clip_qkv": 8, "rope_theta": 10000},
    },
    "jamba": {
        "num_hidden_layers": 2, "attn_layer_offset": 1, "attn_layer_period": 2, "expert_layer_offset": 1,
        "expert_layer_period": 2, "mamba_d_conv": 4, "mamba_d_state": 16, "mamba_expand": 2,
        "mamba_dt_rank": 128, "num_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128,
    },
    "granitemoehybrid": {
        "attention_bias": False, "embedding_multiplier": 12.0, "attention_multiplier": 0.03125,
        "logits_scaling": 4.0, "residual_multiplier": 0.22, "layer_types": ["mamba", "attention"],
        "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128,
        "shared_intermediate_size": 128, "mamba_n_heads": 4, "mamba_d_head": 64, "mamba_proj_bias": False,
        "mamba_d_state": 64, "mamba_d_conv": 4, "mamba_n_groups": 1, "mamba_conv_bias": True,
        "position_embedding_type": "rope",
    },
    "nemotron_h": {
        "hybrid_override_pattern": ["M", "E", "*", "E"], "mamba_num_heads": 4, "mamba_head_dim": 64,
        "mamba_proj_bias": False, "ssm_state_size": 64, "conv_kernel": 4, "n_groups": 1, "mlp_bias": False,
        "layer_norm_epsilon": 1e-05, "use_bias": False, "use_conv_bias": True, "attention_bias": False,
        "moe_intermediate_size": 128, "moe_shared_expert_intermediate_size": 128, "n_group": 1,
        "n_routed_experts": 8, "n_shared_experts": 1, "topk_group": 1, "num_experts_per_tok": 2,
        "norm_topk_prob": True, "routed_scaling_factor": 1.0,
    },
    "bailing_moe_v3": {
        "num_hidden_layers": 3, "layer_group_size": 2, "first_k_dense_replace": 1,
        "moe_intermediate_size": 128, "moe_shared_expert_intermediate_size": 128, "num_experts": 8,
        "num_experts_per_tok": 2, "num_shared_experts": 1, "n_group": 1, "topk_group": 1, "q_lora_rank": 128,
        "kv_lora_rank": 128, "qk_nope_head_dim": 128, "qk_rope_head_dim": 32, "v_head_dim": 64,
        "rope_scaling": None,
    },
    "qwen3_vl_moe": {
        "text_config": {
            "model_type": "qwen3_moe", "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-06,
            "vocab_size": 512, "max_position_embeddings": 512, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "num_experts": 16, "num_experts_per_tok": 4,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "moe_intermediate_size": 128,
            "norm_topk_prob": True,
        },
    },
    "deepseek_v32": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_key_value_heads": 4, "n_routed_experts": 16,
        "n_shared_experts": 1, "num_experts_per_tok": 4, "moe_intermediate_size": 128, "n_group": 2,
        "topk_group": 1, "routed_scaling_factor": 2.5, "kv_lora_rank": 128, "q_lora_rank": 128,
        "qk_rope_head_dim": 32, "qk_nope_head_dim": 128, "v_head_dim": 64, "index_head_dim": 64,
        "index_n_heads": 4, "index_topk": 16,
    },
    "mistral4": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_key_value_heads": 4,
        "moe_intermediate_size": 128, "n_shared_experts": 1, "n_routed_experts": 16,
        "routed_scaling_factor": 1.0, "kv_lora_rank": 128, "q_lora_rank": 128, "norm_topk_prob": True,
        "topk_group": 1, "num_experts_per_tok": 4, "n_group": 1, "qk_rope_head_dim": 32,
        "qk_nope_head_dim": 128, "v_head_dim": 64, "head_dim": None,
        "rope_parameters": {
            "rope_type": "default", "rope_theta": 10000.0, "llama_4_scaling_beta": 0.1,
            "original_max_position_embeddings": 16,
        },
    },
    "phixtral": {
        "num_vocab": 512, "model_dim": 128, "num_heads": 4, "num_layers": 2, "rotary_dim": 16,
        "num_experts_per_tok": 2, "num_local_experts": 8,
    },
    "deepseek": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 8, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "moe_intermediate_size": 128,
    },
    "mellum": {
        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 128, "norm_topk_prob": True,
        "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_theta": 10000.0}, "full_attention": {"rope_theta": 10000.0},
        },
    },
    "bailing_moe_linear": {
        "num_hidden_layers": 3, "layer_group_size": 2, "group_norm_size": 1, "first_k_dense_replace": 1,
        "moe_intermediate_size": 128, "num_experts": 8, "num_shared_experts": 1, "norm_topk_prob": True,
        "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    },
    "glm_moe_dsa": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_key_value_heads": 4, "n_routed_experts": 16,
        "n_shared_experts": 1, "num_experts_per_tok": 4, "moe_intermediate_size": 128, "n_group": 1,
        "topk_group": 1, "routed_scaling_factor": 2.5, "kv_lora_rank": 128, "q_lora_rank": 128,
        "qk_rope_head_dim": 32, "qk_nope_head_dim": 128, "v_head_dim": 64, "index_head_dim": 64,
        "index_n_heads": 4, "index_topk": 16, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
        "norm_topk_prob": True, "moe_layer_freq": 1, "attention_bias": False,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    },
    "longcat_flash_ngram": {
        "ffn_hidden_size": 256, "moe_topk": 2, "expert_ffn_hidden_size": 128, "n_routed_experts": 8,
        "zero_expert_num": 2, "num_layers": 2, "kv_lora_rank": 128, "q_lora_rank": 128,
        "qk_rope_head_dim": 32, "qk_nope_head_dim": 128, "v_head_dim": 64, "routed_scaling_factor": 1.0,
        "mla_scale_q_lora": True, "mla_scale_kv_lora": True, "ngram_vocab_size_ratio": 1,
        "emb_neighbor_num": 2, "emb_split_num": 1,
    },
    "bailing_hybrid": {
        "num_hidden_layers": 3, "layer_group_size": 2, "group_norm_size": 1, "first_k_dense_replace": 1,
        "moe_intermediate_size": 128, "moe_shared_expert_intermediate_size": 128, "num_experts": 8,
        "num_experts_per_tok": 2, "num_shared_experts": 1, "n_group": 1, "topk_group": 1,
        "routed_scaling_factor": 1.0, "q_lora_rank": 128, "kv_lora_rank": 128, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 32, "v_head_dim": 64, "rope_scaling": None,
    },
    "deepseek_v41": {  # its own cache class (LayerCache): sliding window, compressed KV, indexer
        "num_hidden_layers": 3, "num_attention_heads": 4, "head_dim": 128, "q_lora_rank": 128,
        "qk_rope_head_dim": 32, "o_groups": 2, "o_lora_rank": 64, "moe_intermediate_size": 128,
        "n_routed_experts": 16, "num_experts_per_tok": 4, "scoring_func": "sqrtsoftplus",
        "norm_topk_prob": True, "routed_scaling_factor": 1.5, "swiglu_limit": 10.0, "sliding_window": 16,
        "compress_ratios": [0, 4, 4], "kv_source_layer_ids": [1], "index_source_layer_ids": [1],
        "candidate_source_layer_id": -1, "index_n_heads": 2, "index_head_dim": 64, "index_topk": 4,
        "compress_rope_theta": 160000.0, "rope_scaling": None, "hc_mult": 4, "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-06,
    },
    "kimi_k3": {  # hidden 256: its experts run on a 128-wide latent the router never sees
        "hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
        "model_max_length": 512,
        "linear_attn_config": {
            "kda_layers": [1, 3], "full_attn_layers": [2], "num_heads": 2, "head_dim": 128,
            "short_conv_kernel_size": 4,
        },
        "q_lora_rank": 128, "kv_lora_rank": 128, "qk_nope_head_dim": 128, "qk_rope_head_dim": 32,
        "v_head_dim": 64, "mla_use_nope": True, "mla_use_output_gate": True, "num_experts": 16,
        "num_experts_per_token": 4, "num_shared_experts": 1, "moe_intermediate_size": 128,
        "routed_scaling_factor": 2.5, "moe_renormalize": True, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "num_expert_group": 1, "topk_group": 1, "routed_expert_hidden_size": 128,
        "latent_moe_use_norm": True, "attn_res_block_size": 2, "activation_situ_beta": 2.0,
    },
    "kimi_vl": {
        "text_config": {
            "model_type": "deepseek_v3", "hidden_size": 128, "num_hidden_layers": 3, "intermediate_size": 256,
            "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "vocab_size": 512,
            "max_position_embeddings": 512, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "first_k_dense_replace": 1, "n_routed_experts": 16, "n_shared_experts": 1,
            "num_experts_per_tok": 4, "moe_intermediate_size": 128, "n_group": 1, "topk_group": 1,
            "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
            "routed_scaling_factor": 2.5, "moe_layer_freq": 1, "kv_lora_rank": 128, "q_lora_rank": 128,
            "qk_rope_head_dim": 32, "qk_nope_head_dim": 128, "v_head_dim": 64, "rope_scaling": None,
            "attention_bias": False,
        },
    },
    "minimax_m3_vl": {
        "text_config": {
            "model_type": "minimax_m3", "hidden_size": 128, "num_hidden_layers": 3, "intermediate_size": 128,
            "dense_intermediate_size": 256, "shared_intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06,
            "vocab_size": 512, "max_position_embeddings": 512, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "num_local_experts": 8, "num_experts_per_tok": 2,
            "routed_scaling_factor": 2.0, "use_qk_norm": True, "use_gemma_norm": True,
            "mlp_layer_types": ["dense", "sparse", "sparse"],
            "layer_types": ["full_attention", "minimax_m3_sparse", "full_attention"],
            "sparse_attention_config": {
                "sparse_num_index_heads": 2, "sparse_index_dim": 32, "sparse_block_size": 4,
                "sparse_topk_blocks": 2, "sparse_local_block": 1,
            },
        },
    },
    "muse_spark": {  # mlx-lm runs it on Metal only (its kernels); audio_config for transformers' check
        "text_config": {
            "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "vocab_size": 512, "rms_norm_eps": 1e-06, "post_norm_eps": 1e-06,
            "max_position_embeddings": 512, "tie_word_embeddings": False,
            "rope_parameters": {"rope_theta": 10000.0}, "layer_rope_theta": [10000.0, 0, 10000.0],
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"], "sliding_window": 16,
            "final_logit_softcapping": 30.0, "output_multiplier": 1.0, "num_local_experts": 8,
            "num_experts_per_tok": 2, "moe_hidden_size": 128, "moe_intermediate_size": 128,
            "routed_scaling_factor": 1.0, "num_shared_experts": 0, "bos_token_id": 1, "eos_token_id": 2,
            "pad_token_id": 2,
        },
        "audio_config": {"out_hidden_size": 128},
    },
    "qwen3_5": {
        "num_hidden_layers": 4, "full_attention_interval": 2, "linear_num_value_heads": 4,
        "linear_num_key_heads": 2, "linear_key_head_dim": 32, "linear_value_head_dim": 32,
        "linear_conv_kernel_dim": 4, "num_experts": 16, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
        "shared_expert_intermediate_size": 128, "moe_intermediate_size": 128, "norm_topk_prob": True,
        "rope_parameters": {
            "type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
    },
}  # fmt: skip
