"""The ComfyUI side of benchmarks/comfy_check.py, run as ``python -c READER COMFY_DIR GGUF_DIR JOBS_JSON``."""

import textwrap

# The ComfyUI side: runs in its own interpreter with the ComfyUI checkout first on sys.path, never this package.
READER = textwrap.dedent(
    r"""
    import importlib, importlib.abc, importlib.machinery, json, sys, types
    from unittest import mock

    comfy_dir, gguf_dir, jobs_file = sys.argv[1:4]
    stubbed = []

    class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # stand-ins for media libraries ComfyUI's model_base imports for other model types
        names = ("torchvision", "torchaudio", "av")

        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in self.names:
                stubbed.append(name)
                return importlib.machinery.ModuleSpec(name, self, is_package=True)

        def create_module(self, spec):
            module = mock.MagicMock(name=spec.name)
            module.__path__, module.__spec__ = [], spec
            return module

        def exec_module(self, module):
            pass

    _Absent.names = tuple(n for n in _Absent.names if importlib.util.find_spec(n) is None)
    if any("forward" in job for job in json.load(open(jobs_file))["files"].values()):
        # diffusers (and transformers) read the versions of optional libraries when first imported: before the
        # stand-ins, so that they see the libraries as absent
        import diffusers.loaders.single_file_model  # noqa: F401
        from diffusers import FluxTransformer2DModel  # noqa: F401
    sys.meta_path.append(_Absent())
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    import comfy.model_detection as detection
    import comfy.utils

    gguf_loader = dequant = None
    if gguf_dir:
        package = types.ModuleType("comfyui_gguf")  # its folder name has a hyphen; its __init__ wants a server
        package.__path__ = [gguf_dir]
        sys.modules["comfyui_gguf"] = package
        gguf_loader = importlib.import_module("comfyui_gguf.loader")
        dequant = importlib.import_module("comfyui_gguf.dequant")

    BLOCK_CONFIG_KEYS = ("depth", "depth_single_blocks", "num_layers", "num_blocks")

    def detect(state):
        config = detection.detect_unet_config(state, "")
        if config is None:
            return dict(image_model=None, model_config=None), None
        found = dict(image_model=config.get("image_model") or ("mmdit" if "x_block_self_attn_layers" in config else "?"))
        found.update({k: config[k] for k in BLOCK_CONFIG_KEYS if k in config})
        model_config = detection.model_config_from_unet_config(config, state)
        found["model_config"] = type(model_config).__name__ if model_config is not None else None
        return found, model_config

    def against_model(model_config, shapes, prefixes, small):
        # ComfyUI's model for the detected config, weightless (meta device): which of our keys it has, which it lacks.
        # Some models cannot be built on the meta device; a small one (a tiny file's block count) is built on the CPU.
        try:
            with torch.device("meta"):
                model = model_config.get_model({}, "", device=torch.device("meta"))
        except Exception as error:
            if not small:
                return dict(built=False, error=f"{type(error).__name__}: {error}"[:300])
            try:
                model = model_config.get_model({}, "")
            except Exception as error:
                return dict(built=False, error=f"{type(error).__name__}: {error}"[:300])
        ref = {k[len("diffusion_model."):]: tuple(v.shape) for k, v in model.state_dict().items()
               if k.startswith("diffusion_model.")}
        missing = sorted(set(ref) - set(shapes))
        unexpected = sorted(set(shapes) - set(ref))
        mismatched = sorted(k for k in set(ref) & set(shapes) if ref[k] != tuple(shapes[k]))
        blocks = {p: len({k.split(".")[1] for k in ref if k.startswith(p + ".")}) for p in prefixes}
        return dict(built=True, blocks_built=blocks, missing=len(missing), unexpected=len(unexpected),
                    mismatched=len(mismatched), examples=(missing + unexpected + mismatched)[:4])

    def flux_forward(job, state):
        # ComfyUI's own load path ("Load Diffusion Model"), then one forward of ComfyUI's Flux and of diffusers' Flux
        # (from_single_file of the same file) on the same random inputs, in float32
        import logging

        import comfy.sd
        import diffusers

        messages = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        patcher = comfy.sd.load_diffusion_model_state_dict(dict(state), model_options={"dtype": torch.float32})
        comfy_model = patcher.model.diffusion_model.float().eval()
        logging.getLogger().removeHandler(handler)
        stock = getattr(diffusers, job["forward"]["stock_class"]).from_single_file(
            job["single"], config=job["forward"]["folder"], subfolder="transformer", torch_dtype=torch.float32
        ).eval()
        g = torch.Generator().manual_seed(0)
        b, c, h, w, tokens = 1, 16, 8, 8, 8
        x, context = torch.randn(b, c, h, w, generator=g), torch.randn(b, tokens, 4096, generator=g)
        pooled, t, guidance = torch.randn(b, 768, generator=g), torch.tensor([0.7]), torch.tensor([3.5])
        with torch.no_grad():
            theirs = comfy_model(x, t, context, y=pooled, guidance=guidance)
            # diffusers' Flux takes 2x2 patches as tokens (channel, row, column order) with (0, row, column) ids
            packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
            ids = torch.zeros(h // 2, w // 2, 3)
            ids[..., 1], ids[..., 2] = torch.arange(h // 2)[:, None], torch.arange(w // 2)[None, :]
            ours = stock(hidden_states=packed, encoder_hidden_states=context, pooled_projections=pooled, timestep=t,
                         img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(tokens, 3), guidance=guidance).sample
            ours = ours.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return dict(
            comfy_load_messages=[m[:300] for m in messages if "missing" in m or "unexpected" in m or "left over" in m],
            comfy_model=type(comfy_model).__name__,
            max_abs_difference=(theirs - ours).abs().max().item(),
            output_max_abs=ours.abs().max().item(),
        )

    jobs = json.load(open(jobs_file))
    out = dict(files={}, published={})
    for name, job in jobs["files"].items():
        state = comfy.utils.load_torch_file(job["single"])
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        found, model_config = detect(state)
        row = dict(single=found)
        if model_config is not None:
            row["single_vs_model_keys"] = against_model(model_config, shapes, job["prefixes"], small=True)
        if gguf_loader is not None:
            try:
                sd, arch = gguf_loader.gguf_sd_loader(job["gguf"], return_arch=True)
            except Exception as error:
                row["gguf"] = dict(read=False, error=f"{type(error).__name__}: {error}"[:300])
            else:
                worst, types_seen, bad_shapes = 0.0, {}, []
                for key, tensor in sd.items():
                    qtype = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
                    types_seen[qtype] = types_seen.get(qtype, 0) + 1
                    if tuple(tensor.tensor_shape) != shapes.get(key):
                        bad_shapes.append(key)
                        continue
                    value = dequant.dequantize_tensor(tensor, dtype=torch.float32).float()
                    ref = state[key].float()
                    worst = max(worst, ((value - ref).norm() / ref.norm().clamp_min(1e-12)).item())
                g_found = detect(sd)[0]
                row["gguf"] = dict(read=True, arch=arch, same_keys=sorted(sd) == sorted(state),
                                   shape_mismatches=bad_shapes[:4], tensor_types=types_seen,
                                   max_relative_error=worst, detected=g_found)
        if "forward" in job:
            row["forward"] = flux_forward(job, state)
        out["files"][name] = row
    for name, job in jobs["published"].items():
        shapes = {k: tuple(v) for k, v in job["shapes"].items()}
        state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        found, model_config = detect(state)
        row = dict(detected=found, expected_blocks=job["blocks"])
        if model_config is not None:
            row["vs_model"] = against_model(model_config, shapes, list(job["blocks"]), small=False)
        out["published"][name] = row
    out["stand_ins"] = sorted({n.split(".")[0] for n in stubbed})
    assert "diffusers_layerprune" not in sys.modules
    print(json.dumps(out))
    """
)
