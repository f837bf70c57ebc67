"""Nothing outside ``diffusers_layerprune/families/`` names a family: a family is one file plus its registry line.

Code outside ``families/`` reads what it needs from the family's record (``ModelFamily``), so adding a family never
means editing another module. The check parses the package (``ast``): a string literal that is a family's short name
or that names one of a family's classes (stock transformer, pipelines, pruned class, ControlNet), or an identifier
naming such a class, fails the test. Docstrings and comments are prose, not code, and are not checked.
"""

import ast
import re
from pathlib import Path

import diffusers_layerprune
from diffusers_layerprune.families import FAMILIES, get_family

PACKAGE = Path(diffusers_layerprune.__file__).parent

# Modules allowed to name a family, and why. Keep it short: every entry is a module that cannot read the registry.
ALLOWED = {
    # diffusers' custom_pipeline loader imports this file into a fresh process without diffusers-layerprune: it
    # must subclass the stock pipeline by name (prompt routing exists for PixArt-Sigma only, ModelFamily.routing).
    "routing/pipeline_routed_pixart.py": "stand-alone custom pipeline file shipped beside the weights",
    # The toy world is one concrete model (a small PixArt-Sigma pipeline trained on shapes by toy/train_teacher.py,
    # shipped as files), like a checkpoint's config: it names the classes it is built from, it is not family code.
    "toy/": "a concrete model's definition and loader",
}


def family_words() -> tuple[set[str], set[str]]:
    """(short names, class names) of every registered family."""
    classes = set()
    for name in FAMILIES:
        family = get_family(name)
        classes |= {family.transformer_class, *family.pipeline_classes, family.pruned_class().__name__}
        if family.controlnet is not None:
            classes |= {family.controlnet.model_class, family.controlnet.pipeline_class}
    return set(FAMILIES), classes


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of the module, classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def violations(path: Path, names: set[str], classes: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(classes))) + r")\b")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if text.strip() in names or text.startswith(tuple(f"{n}." for n in names)):
                found.append(f"{node.lineno}: string {text!r} is a family's name")
            elif match := pattern.search(text):
                found.append(f"{node.lineno}: string names {match.group(1)}")
        elif isinstance(node, ast.Name) and node.id in classes:
            found.append(f"{node.lineno}: name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in classes:
            found.append(f"{node.lineno}: attribute {node.attr}")
        elif isinstance(node, ast.alias) and node.name.rpartition(".")[2] in classes:
            found.append(f"{node.lineno}: import of {node.name}")
    return found


def test_no_module_outside_families_names_a_family():
    names, classes = family_words()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("families/", *ALLOWED)):
            continue
        problems += [f"{rel}:{v}" for v in violations(path, names, classes)]
    assert not problems, "family-specific code outside families/:\n" + "\n".join(problems)


def test_the_check_sees_a_family_named_in_code(tmp_path):
    """The check itself: a family's name as a string, a stock class by name and an import of a pruned class are
    each caught; the same words in a docstring are not."""
    names, classes = family_words()
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Docstrings may say PixArtTransformer2DModel and flux."""\n'
        "from diffusers_layerprune.modeling import PrunedFluxTransformer\n"
        'if family.name == "sana":\n'
        '    cls = "SD3Transformer2DModel"\n'
    )
    found = violations(bad, names, classes)
    assert [line.split(":")[0] for line in found] == ["2", "3", "4"], found


def test_allowed_modules_exist_and_still_need_their_entry():
    names, classes = family_words()
    for rel in ALLOWED:
        paths = sorted((PACKAGE / rel).rglob("*.py")) if rel.endswith("/") else [PACKAGE / rel]
        assert any(violations(p, names, classes) for p in paths), f"{rel} no longer names a family: drop it"
