"""The import layering, enforced: neither face imports the other's framework, lower layers never import higher
ones, and no private name crosses a module boundary. An AST pass over every module (function-level imports
included), plus fresh interpreters that import each face and look at `sys.modules`.

Layers of `dpo_jax`, lowest first (a module may import its own layer and the ones below):
  0  ops/, sharding, files      computations a kernel may replace; the device mesh; atomic file writes
  1  models/                    the model contract and the families
  2  logprobs, losses, validation, row_guards, forward, tokenizer, pretrained_tokenizer, data, sampling
  3  layouts/
  4  dpo
  5  train/, demo               the trainer and its built-in task (the demo the run falls back to)
  6  cli, __main__, hf_demo     the command line, and the pretrained-model recipe that drives it (and the
                                package root, which re-exports the API)
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = [
    ("dpo_jax.ops", "dpo_jax.sharding", "dpo_jax.files"),
    ("dpo_jax.models",),
    ("dpo_jax.logprobs", "dpo_jax.losses", "dpo_jax.validation", "dpo_jax.row_guards", "dpo_jax.forward",
     "dpo_jax.tokenizer", "dpo_jax.pretrained_tokenizer", "dpo_jax.data", "dpo_jax.sampling"),
    ("dpo_jax.layouts",),
    ("dpo_jax.dpo",),
    ("dpo_jax.train", "dpo_jax.demo"),
    ("dpo_jax.cli", "dpo_jax.__main__", "dpo_jax.hf_demo"),
]
TORCH_SIDE = ("torch", "x_transformers", "transformers", "peft", "liger_kernel")
JAX_SIDE = ("jax", "jaxlib", "flax", "optax", "orbax")
# where dpo_jax may import a torch-side package, and only inside a function (a conversion the user asked for)
LAZY_TORCH_MODULES = ("dpo_jax.models.x_transformers.introspect", "dpo_jax.models.x_transformers.weights")


def layer_of(module: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path


def imports(path):
    """(imported module, names, at module level?, line) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), id(node) in top_level, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, tuple(a.name for a in node.names), id(node) in top_level, node.lineno


def root(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("name,path", list(modules("dpo_jax")), ids=lambda x: str(x))
def test_dpo_jax_layering(name, path):
    own = layer_of(name)
    for module, names, top, line in imports(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        assert root(module) != "dpo_torch", f"{where}: dpo_jax imports dpo_torch"
        if root(module) in TORCH_SIDE:
            assert not top and name in LAZY_TORCH_MODULES, f"{where}: {module} imported by {name}"
        if root(module) == "dpo_jax":
            target = module if layer_of(module) is not None else module + "." + names[0]
            if own is not None and layer_of(target) is not None:
                assert layer_of(target) <= own, f"{where}: {name} (layer {own}) imports {target} " \
                                                 f"(layer {layer_of(target)})"
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{where}: private name(s) {private} cross from {module}"


@pytest.mark.parametrize("name,path", list(modules("dpo_torch")), ids=lambda x: str(x))
def test_dpo_torch_imports_no_jax(name, path):
    for module, _, _, line in imports(path):
        assert root(module) not in JAX_SIDE + ("dpo_jax",), f"{path.relative_to(ROOT)}:{line}: imports {module}"


def fresh_modules(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {m.split(".")[0] for m in done.stdout.split()}


def test_import_dpo_jax_loads_no_torch():
    loaded = fresh_modules("import dpo_jax")
    assert not loaded & set(TORCH_SIDE + ("dpo_torch",)), sorted(loaded & set(TORCH_SIDE + ("dpo_torch",)))


def test_import_dpo_torch_loads_no_jax():
    loaded = fresh_modules("import dpo_torch")
    assert not loaded & set(JAX_SIDE + ("dpo_jax",)), sorted(loaded & set(JAX_SIDE + ("dpo_jax",)))
