"""BLIP checkpoints with random weights, for tests, the offline demo and the benchmark.

They are saved with save_pretrained and loaded through the same from_pretrained path as the
real Salesforce checkpoints. Random weights give random text: only types and shapes mean anything.
"""

import os

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipProcessor,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "a an the of in on with and is are photography picture photo cat dog man woman two three "
    "red blue green white black sitting standing table grass street car tree sky water what how "
    "many color who where yes no there this that it"
).split()

# Hidden size 32 and 2 layers (as transformers' own BLIP tests); BLIP-base as the real checkpoints.
SIZES = {
    "tiny": dict(vocab=64, hidden=32, layers=2, heads=4, text_heads=4, intermediate=37, image=32, patch=8),
    "base": dict(vocab=30524, hidden=768, layers=12, heads=12, text_heads=12, intermediate=3072, image=384, patch=16),
}


def vocabulary(size: int) -> list[str]:
    """Special tokens, common words, filler words, then the decoder's [DEC] as the last id."""
    words = SPECIAL + WORDS
    words += [f"w{index}" for index in range(size - 1 - len(words))]
    return words + ["[DEC]"]


def config(size: str) -> BlipConfig:
    """A BlipConfig of the given size whose special token ids lie inside the vocabulary."""
    s = SIZES[size]
    text = dict(
        vocab_size=s["vocab"], hidden_size=s["hidden"], encoder_hidden_size=s["hidden"],
        intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
        num_attention_heads=s["text_heads"], max_position_embeddings=512,
        pad_token_id=0, sep_token_id=3, eos_token_id=3, bos_token_id=s["vocab"] - 1,
    )
    vision = dict(
        hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], image_size=s["image"], patch_size=s["patch"],
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=s["hidden"])


def processor(size: str, folder: str) -> BlipProcessor:
    """A BERT tokenizer over a written vocabulary file and a BLIP image processor."""
    s = SIZES[size]
    os.makedirs(folder, exist_ok=True)
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as file:
        file.write("\n".join(vocabulary(s["vocab"])) + "\n")
    tokenizer = BertTokenizer(vocab_file, bos_token="[DEC]")
    images = BlipImageProcessorPil(size={"height": s["image"], "width": s["image"]})
    return BlipProcessor(image_processor=images, tokenizer=tokenizer)


def save_random_blip(folder: str, size: str = "tiny", seed: int = 0) -> dict[str, str]:
    """Save a captioning and a VQA checkpoint under folder; return their directories by role."""
    paths = {"caption": os.path.join(folder, "caption"), "vqa": os.path.join(folder, "vqa")}
    torch.manual_seed(seed)
    for role, model_class in (("caption", BlipForConditionalGeneration), ("vqa", BlipForQuestionAnswering)):
        if os.path.exists(os.path.join(paths[role], "config.json")):
            continue
        model = model_class(config(size))
        with torch.no_grad():  # transformers starts biases at zero; trained ones are not, so neither are these
            for name, parameter in model.named_parameters():
                if name.endswith(".bias"):
                    parameter.normal_(0, 0.02)
        model.save_pretrained(paths[role])
        processor(size, paths[role]).save_pretrained(paths[role])
    return paths
