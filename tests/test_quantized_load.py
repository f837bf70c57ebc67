"""Pruned folders load with stock diffusers' quantization backends (``[quant]`` extra) and still generate.

``PipelineQuantizationConfig(quant_mapping=...)``, not ``quant_backend=``: the latter raises "signatures ... don't
match" when transformers is installed (docs/DESIGN notes). bitsandbytes needs CUDA: documented, not tested here.
"""

import json
import textwrap

import pytest

from diffusers_layerprune.families import get_family
from diffusers_layerprune.hub import render_model_card
from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
from diffusers_layerprune.testing import TINY_BUILDERS, TINY_RESOLUTION

from helpers import run_stock

pytest.importorskip("torchao", reason="the [quant] extra (torchao) is not installed")
pytest.importorskip("optimum.quanto", reason="the [quant] extra (optimum-quanto) is not installed")

# Images are in [0, 1]; int8 weight-only on tiny random models moved them by at most 0.078 (quanto, Sana).
TOLERANCE = 0.1


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """Every family's tiny pruned pipeline loaded in ONE fresh stock process, in float32 and with the transformer in
    int8 (torchao and quanto); also the card's quantized snippet run as printed on the PixArt folder."""
    root = tmp_path_factory.mktemp("quant")
    folders = {
        f: save_pruned_pipeline(prune_pipeline(b(), pruned_layers=[1]), root / f) for f, b in TINY_BUILDERS.items()
    }
    card = render_model_card(folders["pixart"], "me/tiny-pruned")
    snippet = card.split("Optional, 8-bit transformer weights")[1].split("```python")[1].split("```")[0]
    snippet = snippet.replace('"me/tiny-pruned"', repr(str(folders["pixart"])))
    jobs = [(f, str(p), TINY_RESOLUTION[f], dict(get_family(f).tiny_call_args)) for f, p in folders.items()]
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from diffusers import DiffusionPipeline, PipelineQuantizationConfig, QuantoConfig, TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        def generate(pipe, family, size, extra):
            pipe.set_progress_bar_config(disable=True)
            return pipe(prompt="a red circle", num_inference_steps=2, height=size, width=size, max_sequence_length=16,
                        output_type="pt", generator=torch.Generator().manual_seed(0), **extra).images.float()

        def int8_linears(transformer):
            linears = [m for m in transformer.modules() if isinstance(m, torch.nn.Linear)]
            quantized = [m for m in linears if type(m).__name__ == "QLinear" or type(m.weight).__name__ not in
                         ("Parameter", "Tensor")]
            return len(quantized), len(linears)

        out = {{}}
        for family, folder, size, extra in {jobs!r}:
            reference = generate(DiffusionPipeline.from_pretrained(folder), family, size, extra)
            for name, config in (("torchao", TorchAoConfig(Int8WeightOnlyConfig())),
                                 ("quanto", QuantoConfig(weights_dtype="int8"))):
                quant = PipelineQuantizationConfig(quant_mapping={{"transformer": config}})
                pipe = DiffusionPipeline.from_pretrained(folder, quantization_config=quant, torch_dtype=torch.float32)
                images = generate(pipe, family, size, extra)
                out[f"{{family}}/{{name}}"] = dict(
                    finite=bool(torch.isfinite(images).all()), diff=(images - reference).abs().max().item(),
                    int8=int8_linears(pipe.transformer))
        import torch
        from diffusers import DiffusionPipeline
        {textwrap.indent(snippet, " " * 8).strip()}
        images = generate(pipe, "pixart", {TINY_RESOLUTION["pixart"]}, {dict(get_family("pixart").tiny_call_args)!r})
        out["card"] = dict(finite=bool(torch.isfinite(images).all()), int8=int8_linears(pipe.transformer),
                           dtype=str(pipe.transformer.dtype))
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        print(json.dumps(out))
        """
    )
    result = run_stock(script, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["torchao", "quanto"])
@pytest.mark.parametrize("family", list(TINY_BUILDERS))
def test_pruned_folder_generates_with_int8_transformer_close_to_float32(quantized, family, backend):
    run = quantized[f"{family}/{backend}"]
    done, total = run["int8"]
    assert total > 0 and done == total, run  # every Linear of the transformer holds int8 weights
    assert run["finite"] and run["diff"] <= TOLERANCE, run


def test_card_quantized_snippet_runs_as_printed(quantized):
    run = quantized["card"]
    assert run["finite"] and run["int8"][0] == run["int8"][1] > 0, run
