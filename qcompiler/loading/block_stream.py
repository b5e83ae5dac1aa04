"""Quantize a model block by block: each block is brought in, compiled on the calls it receives, and
its float weights let go before the next block comes.

The calls a block receives are recorded by running the model up to it (a pre-hook stops the
forward there); after a block is compiled, every call runs through it and its outputs become the
next block's hidden states. Which outputs feed the next block is ``calibrate_on``:

* ``"quantized"`` (default): the quantized block's, so each block is calibrated on what it will
  really see (sequential calibration, as GPTQ and AWQ do within a whole-model compile);
* ``"float"``: the float block's, as a whole-model ``compile`` calibrates the non-sequential
  schemes (int8-outlier, SmoothQuant): the result then matches that compile layer for layer.
  Sequential schemes (GPTQ, AWQ) always use the quantized outputs, as ``compile`` does.

After the blocks, the model's remaining linear layers (the LM head) are compiled the same way
on the calls they receive from a forward of the now-quantized model.

A Hugging Face block is called with the forward's ``DynamicCache``; each recorded call gets a
:class:`PrefillCache` instead, which returns the keys/values it is given and stores nothing, so
a block can run on the same call many times (capture, calibration, outputs) without its cache
growing. The block still sees a cache object, so it splits into the same regions as in a
whole-model compile (attention eager, projections and MLP captured) and ``generate()`` works.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from qcompiler.errors import CalibrationError
from qcompiler.loading.unit_compile import Call, UnitPlan, UnitResult, compile_unit

__all__ = ["record_calls", "run_blocks", "outer_linear_paths", "PrefillCache", "block_output",
           "with_hidden", "SEQUENTIAL_PASSES"]

# pipeline passes that calibrate each region on the outputs of the quantized regions before it
SEQUENTIAL_PASSES = ("gptq", "awq")


class _Reached(Exception):
    """Raised by the recording hook to stop the forward at the module it watches."""


def _prefill_cache_type():
    from transformers.cache_utils import DynamicCache

    class PrefillCache(DynamicCache):
        """A cache for one prefill call: ``update`` hands back what it is given and keeps nothing."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # noqa: ARG002
            return key_states, value_states

        def get_seq_length(self, layer_idx: int = 0) -> int:  # noqa: ARG002
            return 0

    return PrefillCache


def PrefillCache():  # noqa: N802 - a class made on first use (transformers is imported late)
    return _prefill_cache_type()()


def _detach_cache(v: Any) -> Any:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # not a transformers model
        return v
    return PrefillCache() if isinstance(v, Cache) else v


def record_calls(model: nn.Module, module: nn.Module, calls: list[Call], *,
                 device: torch.device | None = None,
                 override: tuple[nn.Module, list[torch.Tensor]] | None = None) -> list[Call]:
    """For each model-level call, the (args, kwargs) ``module`` receives in it (the forward stops
    there); caches are swapped for :class:`PrefillCache`, tensors kept where they are.
    ``override=(block, hiddens)``: ``block`` returns ``hiddens[i]`` in call i (the float stream)."""
    got: list[Call] = []
    current = [0]
    handles = []
    if override is not None:
        def replace(mod, args, kwargs, out):
            h = override[1][current[0]]
            return h if isinstance(out, torch.Tensor) else (h, *out[1:])
        handles.append(override[0].register_forward_hook(replace, with_kwargs=True))

    def hook(mod, args, kwargs):
        got.append((tuple(args), {k: _detach_cache(v) for k, v in kwargs.items()}))
        raise _Reached

    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    move = (lambda t: t.to(device) if isinstance(t, torch.Tensor) else t) if device is not None else (lambda t: t)
    try:
        with torch.no_grad():
            for i, (args, kwargs) in enumerate(calls):
                n, current[0] = len(got), i
                try:
                    model(*tree_map(move, args), **tree_map(move, kwargs))
                except _Reached:
                    pass
                except Exception as e:  # noqa: BLE001 - the user's data does not fit the model
                    raise CalibrationError(f"input {i} does not fit the model: {type(e).__name__}: {e}",
                                           hint="each item must be something the model accepts") from e
                if len(got) == n:
                    raise CalibrationError(f"input {i} never reaches {type(module).__name__}",
                                           hint="the model's forward skips its blocks for this input")
    finally:
        for h in handles:
            h.remove()
    return got


def block_output(out: Any) -> torch.Tensor:
    """The hidden states a block returns (a tensor, or the first item of a tuple)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def with_hidden(call: Call, hidden: torch.Tensor) -> Call:
    """``call`` with its hidden states (first positional, else ``hidden_states=``) replaced."""
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _run(module: nn.Module, calls: list[Call]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [block_output(module(*a, **k)) for a, k in calls]


def run_blocks(blocks: nn.ModuleList, prefix: str, calls: list[Call], plan: UnitPlan, *,
               bring_in: Callable[[int], None], calibrate_on: str = "quantized", progress: bool = True,
               place: Callable[[int, list[Call]], list[Call]] | None = None,
               finished: Callable[[int], None] | None = None) -> tuple[list[UnitResult], list[torch.Tensor] | None]:
    """Compiles ``blocks[i]`` for i = 0..n-1; ``bring_in(i)`` gives block i its float weights first.
    ``calls``: what block 0 receives. Each block is replaced in ``blocks`` by its compiled self.
    Returns the units and, when calibrating on the float stream, the last float block's outputs.
    ``place(i, calls)``: the calls moved to block i's device; ``finished(i)``: block i is done
    (a device map offloads and hooks it then)."""
    manager = plan.manager()
    sequential = any(p.name in SEQUENTIAL_PASSES for p in manager.passes)
    use_float = calibrate_on == "float" and not sequential
    results = []
    cache: dict = {}  # the blocks are alike: each kind of region is traced once
    bar = tqdm(range(len(blocks)), desc="quantizing blocks", unit="block", disable=not progress)
    for i in bar:
        bar.set_postfix_str(f"{prefix}.{i}")
        bring_in(i)
        calls = place(i, calls) if place is not None else calls
        block = blocks[i]
        float_out = _run(block, calls) if use_float else None
        res = compile_unit(block, f"{prefix}.{i}", calls, plan, manager, cache)
        if res.root is not block:
            blocks[i] = res.root
        quant_out = _run(blocks[i], calls)
        calls = [with_hidden(c, h) for c, h in zip(calls, float_out or quant_out)]
        results.append(res)
        if finished is not None:
            finished(i)
    bar.close()
    return results, ([_hidden_of(c) for c in calls] if use_float else None)


def _hidden_of(call: Call) -> torch.Tensor:
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def outer_linear_paths(model: nn.Module, blocks_path: str) -> list[str]:
    """The linear layers outside the blocks (the LM head), as module paths."""
    from qcompiler.capture import _is_linear_module

    inside = blocks_path + "."
    return [n for n, m in model.named_modules() if n and _is_linear_module(m) and not n.startswith(inside)
            and n != blocks_path]
