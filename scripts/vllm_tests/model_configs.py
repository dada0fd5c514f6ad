"""Write the local model folders vLLM's scheduler tests name (no model hub is reachable in CI).

vLLM's tests/v1/core/test_scheduler.py builds `ModelConfig(model="facebook/opt-125m")` and the like; a folder of
that name in the working directory holding the model's published `config.json` makes it resolve offline
(HF_HUB_OFFLINE=1). The JSON below restates the published architectures of the three models (written here,
not downloaded). No weights; for llava a stand-in tokenizer with its special-token ids (see below).

Usage: python model_configs.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OPT_125M = {
    "_name_or_path": "facebook/opt-125m",
    "activation_dropout": 0.0,
    "activation_function": "relu",
    "architectures": ["OPTForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "do_layer_norm_before": True,
    "dropout": 0.1,
    "eos_token_id": 2,
    "ffn_dim": 3072,
    "hidden_size": 768,
    "init_std": 0.02,
    "layerdrop": 0.0,
    "max_position_embeddings": 2048,
    "model_type": "opt",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "prefix": "</s>",
    "torch_dtype": "float16",
    "transformers_version": "4.21.0.dev0",
    "use_cache": True,
    "vocab_size": 50272,
    "word_embed_proj_dim": 768,
}

LLAVA_15_7B = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.36.0.dev0",
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}

LLAVA_PREPROCESSOR = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}

LLAVA_PROCESSOR = {
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "processor_class": "LlavaProcessor",
    "vision_feature_select_strategy": "default",
}

QWEN3_NEXT_80B_A3B = {
    "architectures": ["Qwen3NextForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "full_attention_interval": 4,
    "head_dim": 256,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_value_head_dim": 128,
    "max_position_embeddings": 262144,
    "mlp_only_layers": [],
    "model_type": "qwen3_next",
    "moe_intermediate_size": 512,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "num_hidden_layers": 48,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "partial_rotary_factor": 0.25,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000000,
    "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 512,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.57.0.dev0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

FOLDERS = {
    "facebook/opt-125m": {"config.json": OPT_125M},
    "llava-hf/llava-1.5-7b-hf": {
        "config.json": LLAVA_15_7B,
        "preprocessor_config.json": LLAVA_PREPROCESSOR,
        "processor_config.json": LLAVA_PROCESSOR,
    },
    "Qwen/Qwen3-Next-80B-A3B-Instruct": {"config.json": QWEN3_NEXT_80B_A3B},
}


# llava's processor needs a tokenizer that knows its special tokens at their published ids (<image> 32000,
# <pad> 32001 of a 32064-entry vocabulary). The multimodal scheduler tests never tokenize text, so a
# word-level stand-in built here with the `tokenizers` library (a vLLM dependency) serves: same ids, no vocab.
LLAVA_SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 32000: "<image>", 32001: "<pad>"}
LLAVA_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "model_max_length": 4096,
}


def write_llava_tokenizer(d: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {LLAVA_SPECIAL.get(i, f"t{i}"): i for i in range(LLAVA_15_7B["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(LLAVA_SPECIAL.values()))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(LLAVA_TOKENIZER_CONFIG, indent=2) + "\n")


def write(root: Path) -> None:
    for folder, files in FOLDERS.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (d / name).write_text(json.dumps(content, indent=2) + "\n")
    write_llava_tokenizer(root / "llava-hf/llava-1.5-7b-hf")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python model_configs.py DIR")
    write(Path(sys.argv[1]))
