"""Vision-language segmentation: CLIPSeg (transformers) prompted with the P0-P7 per-structure prompts.

Synthetic Boost fine-tuned `CIDAS/clipseg-rd64-refined` once per prompt level, one (image, structure,
prompt) triple per sample, and reported Dice per level. Here each level is its own task
(`clipseg-P{level}`) run through the same strategies as the U-Net:

- weights: a local folder with `CLIPSegForImageSegmentation` and `CLIPSegProcessor` files
  (`evaluate.clipseg.weights` or $SYNTHECHO_CLIPSEG_WEIGHTS). They cannot be downloaded on these
  machines; without them the task is skipped and the report says why. A configured path that does not
  exist is an error (the recipe asked for something that is not there).
- training: every real/synthetic frame gives three samples (LV, MYO, LA), each with its structure's
  prompt at the task's level; the phrasing (A "of the heart" / B "in the cardiac ultrasound") is drawn
  per sample, as the medvlsm JSON files do. Loss: Dice + 0.2 x BCE on sigmoid logits (Synthetic Boost's
  DiceCELoss weights in its config), AdamW with weight decay 1e-3. Synthetic Boost used no augmentation;
  here every task gets the study's one policy (`synthecho.downstream.augment`), frames and masks alike.
- evaluation: phrasing A; logits are resized to the frame, thresholded at 0.5, and the three binary
  maps merged into a label map (LV over MYO over LA), so the U-Net metrics apply unchanged (LV epi is the
  union of the LV and MYO predictions). Synthetic Boost evaluated at 512 px; here at the prepared
  resolution. Selection: mean real-validation Dice (LV, MYO, LA).

`save_tiny_clipseg` writes a random-init CLIPSeg with tiny text/vision towers and a real `CLIPTokenizer`
over a byte-level character vocabulary: the tests and CPU demos run the whole prompt path with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from synthecho.downstream import DownstreamTask
from synthecho.downstream.segmentation import EFFECT_METRICS, segmentation_metrics
from synthecho.errors import SynthechoError
from synthecho.metrics import dice_per_image
from synthecho.real import RealSplit

PROMPT_STRUCTURES = ("lv", "myo", "la")  # synthecho.prompts names, label values 1, 2, 3
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def resolve_weights(config) -> tuple[Path | None, str]:
    """(folder, "") when CLIPSeg weights are configured locally, else (None, the reason for skipping)."""
    value = config.weights or os.environ.get(config.weights_env)
    if not value:
        return None, (
            f"no local CLIPSeg weights: set evaluate.clipseg.weights or ${config.weights_env} to a folder "
            f"holding CLIPSegForImageSegmentation + CLIPSegProcessor files (e.g. a copy of "
            f"CIDAS/clipseg-rd64-refined); pretrained weights cannot be downloaded on this machine."
        )
    folder = Path(value).expanduser()
    if not (folder / "config.json").is_file():
        raise SynthechoError(
            f"CLIPSeg weights folder {folder} (from evaluate.clipseg.weights or ${config.weights_env}) has "
            f"no config.json: point it at a saved CLIPSegForImageSegmentation + CLIPSegProcessor folder."
        )
    return folder, ""


def prompt_for(record: dict, structure: str, level: int, phrasing: str) -> str:
    """The P{level} prompt of `structure` for one row (synthecho.prompts.structure_prompt)."""
    from synthecho.prompts import NO_SHAPE, Attributes, structure_prompt

    attrs = Attributes(
        record["view"], record["phase"], record["sex"], int(record["age"]), record["image_quality"]
    )
    shape = record.get(f"shape_{structure}") or NO_SHAPE
    return structure_prompt(structure, level, phrasing, attrs, shape=shape)


def save_tiny_clipseg(folder: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write a random-init CLIPSeg (tiny towers) + CLIPSegProcessor to `folder`; returns the folder.

    The tokenizer is a genuine `CLIPTokenizer` whose vocabulary is the 256 byte-level symbols (with and
    without the end-of-word marker) and no merges: every prompt tokenizes character by character, so no
    vocabulary file has to be downloaded, and positions are sized for the longest P7 prompt.
    """
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )

    folder = Path(folder)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    special = {
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    tiny_tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPSegConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=256, **tiny_tower, **special),
        vision_config=dict(image_size=image_size, patch_size=8, **tiny_tower),
        projection_dim=32,
        reduce_dim=16,
        extract_layers=[0, 1],  # indices into the 2 vision layers
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(config)
    image_processor = ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


class ClipSegTask(DownstreamTask):
    """One prompt level of CLIPSeg: fine-tune (select on real validation Dice) and test."""

    effect_metrics = EFFECT_METRICS
    optimizer, weight_decay = "adamw", 1e-3  # Synthetic Boost's CLIPSeg recipe

    def __init__(
        self, level: int, evaluate_config, validation: RealSplit, test: RealSplit, weights: Path, device=None
    ):
        from transformers import CLIPSegProcessor

        super().__init__(evaluate_config, evaluate_config.clipseg, validation, test, device)
        self.level = level
        self.name = f"clipseg-P{level}"
        self.weights = Path(weights)
        self.processor = CLIPSegProcessor.from_pretrained(self.weights)
        self.settings = {
            "weights": str(self.weights),
            "level": level,
            **self.budget_settings(),
            "loss": "DiceCELoss(sigmoid, lambda_ce=0.2)",
            "optimizer": "AdamW(weight_decay=1e-3)",
        }

    def new_model(self, seed: int):
        """The pretrained weights (the seed only orders the data: nothing is randomly initialised)."""
        from transformers import CLIPSegForImageSegmentation

        return CLIPSegForImageSegmentation.from_pretrained(self.weights).to(self.device)

    def logits(self, model, images: np.ndarray, prompts: list[str]):
        """(B, H, W) uint8 frames + B prompts -> (B, S, S) logits at the model's input size S."""
        rgb = [np.repeat(image[..., None], 3, axis=-1) for image in images]
        max_length = model.config.text_config.max_position_embeddings
        encoded = self.processor(
            text=prompts,
            images=rgb,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        encoded = {key: value.to(self.device) for key, value in encoded.items()}
        logits = model(**encoded).logits
        return logits.reshape(len(images), *logits.shape[-2:])

    def predict(self, model, split: RealSplit, batch_size: int = 32) -> np.ndarray:
        """Label maps (N, H, W) from the three structure prompts (phrasing A), merged LV > MYO > LA."""
        import torch
        import torch.nn.functional as F

        height, width = split.images.shape[1:]
        binary = {}
        model.eval()
        with torch.inference_mode():
            for structure in PROMPT_STRUCTURES:
                maps = []
                for start in range(0, len(split), batch_size):
                    images = split.images[start : start + batch_size]
                    records = split.records[start : start + batch_size]
                    prompts = [prompt_for(record, structure, self.level, "A") for record in records]
                    logits = self.logits(model, images, prompts)[:, None].float()
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                    maps.append((torch.sigmoid(logits[:, 0]) > 0.5).cpu().numpy())
                binary[structure] = np.concatenate(maps)
        labels = np.zeros(split.images.shape, np.uint8)
        labels[binary["la"]] = 3
        labels[binary["myo"]] = 2
        labels[binary["lv"]] = 1
        return labels

    def validate(self, model) -> float:
        dice = dice_per_image(self.predict(model, self.validation), self.validation.masks)
        return float(np.mean([dice[name].mean() for name in PROMPT_STRUCTURES]))

    def items(self, data: RealSplit) -> int:
        return 3 * len(data)  # one sample per (frame, structure)

    def batch_loss(self, model, data: RealSplit, indices: np.ndarray, rng: np.random.Generator):
        import torch
        import torch.nn.functional as F
        from monai.losses import DiceCELoss

        # Sample i is frame i // 3 with structure i % 3 (label value i % 3 + 1).
        frames, kinds = indices // 3, indices % 3
        phrasings = rng.choice(["A", "B"], size=len(indices))
        prompts = [
            prompt_for(data.records[frame], PROMPT_STRUCTURES[kind], self.level, phrasing)
            for frame, kind, phrasing in zip(frames, kinds, phrasings, strict=True)
        ]
        images, masks = self.augmentation(
            data.images[frames].astype(np.float32) / 255.0, data.masks[frames], rng
        )
        logits = self.logits(model, np.rint(images * 255).astype(np.uint8), prompts)[:, None]
        target = torch.from_numpy((masks == (kinds + 1)[:, None, None]).astype(np.float32))
        target = F.interpolate(target[:, None], size=logits.shape[-2:], mode="nearest").to(self.device)
        return DiceCELoss(sigmoid=True, lambda_dice=1.0, lambda_ce=0.2)(logits, target)

    def evaluate(self, model) -> dict:
        return segmentation_metrics(self.predict(model, self.test), self.test)
