import os

# Tests never reach a hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see diffusers_layerprune/__init__.py
# Caches (text embeddings, teacher latents, the teacher-evaluation cache) go to a folder of this session, not to the
# user's ~/.cache: tests start from nothing and leave nothing behind.
if "LAYERPRUNE_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["LAYERPRUNE_CACHE"] = tempfile.mkdtemp(prefix="layerprune-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LAYERPRUNE_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A saved tiny PixArt-Sigma pipeline (6 blocks, random weights), shared by the session: treat as read-only."""
    from diffusers_layerprune.testing import save_tiny_pixart_pipeline

    return save_tiny_pixart_pipeline(tmp_path_factory.mktemp("tiny") / "pipe", num_layers=6)


@pytest.fixture
def tiny_transformer():
    from diffusers_layerprune.testing import build_tiny_transformer

    return build_tiny_transformer(6)


@pytest.fixture
def transformer_inputs():
    """Keyword arguments for one forward pass of the tiny transformer (batch 2, 8x8 latents, 5 text tokens)."""
    g = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(2, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
        timestep=torch.tensor([10, 700]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


@pytest.fixture(autouse=True)
def _autograd_stays_on():
    """Library code and in-process scripts must scope grad mode (``torch.no_grad()``), never switch it off for the
    process: a leak made every later training test fail far from its cause. Fail the test that leaked it."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("the test left autograd switched off process-wide (torch.set_grad_enabled(False) without restore)")


def pytest_collection_finish(session):
    """Start the stock server (helpers.run_stock) now if a collected test will use it: it imports torch and diffusers
    on the other core while the first tests run."""
    import helpers

    if helpers.forks_stock_processes() and any(
        getattr(getattr(item, "module", None), "run_stock", None) is helpers.run_stock for item in session.items
    ):
        helpers.start_stock_server()
