"""Every module of the package is short enough to hold in one's head: at most 700 lines, the training script (read
top to bottom, as diffusers' training examples are) excepted."""

from pathlib import Path

import diffusers_layerprune

PACKAGE = Path(diffusers_layerprune.__file__).parent
LIMIT = 700
EXCEPTED = {"train_distill.py"}


def test_no_package_module_is_over_700_lines():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 50 and sizes["train_distill.py"] > LIMIT  # the package is really read
    long = {name: n for name, n in sizes.items() if n > LIMIT and name not in EXCEPTED}
    assert not long, f"modules over {LIMIT} lines (split them by concept): {long}"
