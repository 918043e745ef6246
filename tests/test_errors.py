"""EncoderShrinkError: every error the library raises on purpose derives from it, and keeps its built-in kind."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import encoder_shrink
from encoder_shrink import EncoderShrinkError, errors

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [ROOT / "encoder_shrink", ROOT / "exporters", ROOT / "recipes", ROOT / "benchmarks"]
# Raised on purpose as built-ins: NotImplementedError marks hooks a subclass must implement (a bug when reached).
# AttributeError: a module-level `__getattr__` (PEP 562) must raise it for a name it does not export.
ALLOWED_BUILTINS = {"NotImplementedError", "AttributeError"}


def _raised_builtins(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = target.id if isinstance(target, ast.Name) else None
            if name and isinstance(getattr(builtins, name, None), type) and name not in ALLOWED_BUILTINS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} raises {name}")
    return found


def test_the_library_raises_no_bare_builtin_errors():
    files = [f for folder in LIBRARY for f in folder.rglob("*.py")]
    assert len(files) > 40
    offenders = [line for f in files for line in _raised_builtins(f)]
    assert offenders == []


def test_the_scan_sees_a_bare_raise(tmp_path):
    (tmp_path / "bad.py").write_text("def f():\n    raise ValueError('x')\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _raised_builtins(tmp_path / "bad.py") == ["bad.py:2 raises ValueError"]
    finally:
        ROOT = saved


def test_every_error_class_derives_from_the_base_and_a_builtin():
    from encoder_shrink.exporters import ExportParityError
    from encoder_shrink.recipes import RecipeError

    from encoder_shrink.data import PromptFileError
    from encoder_shrink.distill import DistillationDiverged

    classes = [getattr(errors, name) for name in errors.__all__ if name != "EncoderShrinkError"]
    classes += [encoder_shrink.WeightsError, PromptFileError, DistillationDiverged, ExportParityError, RecipeError]
    for cls in classes:
        assert issubclass(cls, EncoderShrinkError), cls
        assert any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__[1:]), cls
    assert encoder_shrink.EncoderShrinkError is errors.EncoderShrinkError


@pytest.mark.parametrize("call", [
    lambda: encoder_shrink.load_recipe("flux-t5bse"),
    lambda: encoder_shrink.ShrunkT5Config(teacher_dim=0),
    lambda: encoder_shrink.load_encoder("/nonexistent/student"),
    lambda: encoder_shrink.ShrunkT5EncoderModel.from_pretrained("/nonexistent/student"),
    lambda: encoder_shrink.load_pipeline("/nonexistent/pipeline"),
])
def test_bad_input_raises_the_base_class_in_one_line(call):
    with pytest.raises(EncoderShrinkError) as error:
        call()
    assert "\n" not in str(error.value)
