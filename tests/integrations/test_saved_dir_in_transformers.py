"""A directory written by ``qcompiler.save`` (config.json: quant_method="qcompiler") read by plain
``AutoModelForCausalLM.from_pretrained``: a clear error that says to use ``qcompiler.load(dir)``,
never a model of random weights; and ``import qcompiler`` does not import transformers' quantizers."""

import subprocess
import sys

import pytest
import torch

import qcompiler
from qcompiler.errors import UnsupportedError


@pytest.fixture(scope="module")
def saved_int8_outlier(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                                     eos_token_id=1)).eval()
    ids = torch.randint(3, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    qm = qcompiler.compile(m, "int8-outlier", calibration_data=[ids], progress=False)  # a calibrated scheme
    return qcompiler.save(qm, tmp_path_factory.mktemp("saved") / "q")


def test_from_pretrained_says_to_use_qcompiler_load(saved_int8_outlier):
    from transformers import AutoModelForCausalLM
    qcompiler.QCompilerConfig  # noqa: B018 - registered in this process
    with pytest.raises(UnsupportedError, match=r"qcompiler\.load\(dir") as info:
        AutoModelForCausalLM.from_pretrained(saved_int8_outlier)
    assert "compressed-tensors" in str(info.value)


# A fresh process, as a user has it: `import qcompiler`, nothing else of qcompiler touched.
_SCRIPT = """
import sys
import qcompiler
assert "transformers.quantizers" not in sys.modules, "import qcompiler must not import transformers' quantizers"
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1])
except Exception as e:
    print("ERROR", type(e).__name__, e)
else:
    print("LOADED")
"""


def test_plain_import_qcompiler_is_enough(saved_int8_outlier):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(saved_int8_outlier)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERROR UnsupportedError" in out.stdout and "qcompiler.load(dir" in out.stdout, out.stdout + out.stderr[-2000:]
