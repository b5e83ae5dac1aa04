"""Write a pass of your own and run it inside ``qcompiler.compile``.

The pass keeps the first and the last linear layer of the model in float (a common recipe: the
layers closest to the input and to the logits are the most sensitive). It runs after
``annotate-linears`` and simply drops their quantization specs, noting why for the report.

    python examples/custom_pass.py
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import qcompiler
from qcompiler import PassResult, ProgramPass, register_pass
from qcompiler.spec import SPEC_KEY, get_spec


@register_pass("keep-edges-float")
@dataclass(frozen=True)
class KeepEdgesFloat(ProgramPass):
    """Drop the quantization spec of the first and last annotated linear, in execution order.

    A ProgramPass sees every captured region at once, so "first" and "last" mean the model's,
    even when a Hugging Face model was captured as many regions."""

    first: bool = True
    last: bool = True

    def run_program(self, program, ctx):
        annotated = [(region, node) for region in program.regions
                     for node in region.gm.graph.nodes if get_spec(node) is not None]
        chosen = ([annotated[0]] if self.first and annotated else []) + \
                 ([annotated[-1]] if self.last and len(annotated) > 1 else [])
        for region, node in chosen:
            ctx.note(get_spec(node).layer, f"kept in float by pass '{self.name}'")
            del node.meta[SPEC_KEY]
        return {r.path: PassResult(r.gm, modified=False, preserved=PassResult.ALL) for r in program.regions}


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 16))
    batches = [torch.randn(32, 64) for _ in range(4)]

    # Start from the scheme's own pipeline and put the pass right after the annotation.
    base = qcompiler.pipeline_for("int8-outlier", calibrated=True)
    head, sep, tail = base.partition("calibrate")
    pipeline = f"{head}keep-edges-float,{sep}{tail}"
    print("pipeline:", pipeline)

    qm = qcompiler.compile(model, "int8-outlier", batches, pipeline=pipeline, progress=False)
    print(qm.report())
    x = torch.randn(8, 64)
    err = ((qm(x) - model(x)).norm() / model(x).norm()).item()
    print(f"relative error vs float: {err:.4g}")
    kinds = [r.op for r in qm.report().layers]
    assert kinds[0] == "float" and kinds[-1] == "float" and kinds[1] != "float", kinds


if __name__ == "__main__":
    main()
