"""Hugging Face causal LM -> compile -> generate -> save -> load -> export to ONNX.

    python examples/hf_end_to_end.py                      # a small random Llama, works offline
    python examples/hf_end_to_end.py --model ./my-llama   # any local causal LM directory

Without --model the example builds a 2-layer Llama with random weights and borrows the bundled
MiniLM's tokenizer, so everything runs without network access (the generated text is noise; the
point is that the compiled, saved and reloaded models produce the very same tokens).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import qcompiler
from qcompiler.models import CALIBRATION_SENTENCES


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from qcompiler.models import load_minilm
    tok = load_minilm().tokenizer  # a real tokenizer that ships with qcompiler's test model
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    return LlamaForCausalLM(config).eval(), tok


def load(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a local Hugging Face causal LM directory (default: a small random Llama)")
    ap.add_argument("--out", default=None, help="where to save the compiled model (default: a temp dir)")
    ap.add_argument("--scheme", default="int8-outlier", choices=qcompiler.list_schemes())
    args = ap.parse_args()

    model, tok = load(args.model) if args.model else small_llama()
    encode = dict(padding=True, return_tensors="pt", return_token_type_ids=False)
    batches = [dict(tok(CALIBRATION_SENTENCES[i:i + 8], **encode)) for i in range(0, 32, 8)]

    # 1. compile: capture the model region by region, calibrate, rewrite every linear layer
    qm = qcompiler.compile(model, args.scheme, batches)
    try:
        import rich
        rich.print(qm.report())          # the per-layer table (qm.report().to_markdown() / .to_json())
    except ImportError:
        print(qm.report())

    # 2. generate: the compiled model keeps HF's generate(), KV cache included
    prompt = dict(tok(["The compiler rewrites each matrix multiplication"], **encode))
    gen = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        float_ids = model.generate(**prompt, **gen)
        q_ids = qm.generate(**prompt, **gen)
    print("float    :", tok.decode(float_ids[0], skip_special_tokens=True))
    print("quantized:", tok.decode(q_ids[0], skip_special_tokens=True))

    # 3. save: model.safetensors + qcompiler.json (no pickle), then load on top of the float model
    out = Path(args.out or tempfile.mkdtemp(prefix="qcompiler-")) / "compiled"
    qcompiler.save(qm, out)
    loaded = qcompiler.load(out, model)   # checks the files' sha256 and that `model` is the base
    with torch.no_grad():
        same = torch.equal(loaded.generate(**prompt, **gen), q_ids)
        logits_equal = torch.equal(loaded(**batches[0]).logits, qm(**batches[0]).logits)
    print(f"saved to {out}; reloaded model: same tokens {same}, bit-identical logits {logits_equal}")

    # 4. export: ONNX with the example input the model was captured with
    if not hasattr(qcompiler, "export_onnx"):
        print("ONNX export is not available in this qcompiler")
        return
    onnx_path = out.parent / "compiled.onnx"
    try:
        qcompiler.export_onnx(loaded, dict(input_ids=batches[0]["input_ids"],
                                           attention_mask=batches[0]["attention_mask"]), onnx_path)
    except qcompiler.QCompilerError as e:
        print(f"ONNX export failed: {e}")
        return
    print(f"exported {onnx_path} ({onnx_path.stat().st_size / 2**20:.1f} MiB)")
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: batches[0][i.name].numpy() for i in sess.get_inputs() if i.name in batches[0]}
    ort_logits = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = loaded(**batches[0]).logits.numpy()
    print(f"ONNX Runtime vs PyTorch logits: max |diff| {float(np.abs(ort_logits - ref).max()):.3g}")


if __name__ == "__main__":
    main()
