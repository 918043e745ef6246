"""docs/extending.md says which files each extension touches; every built-in member lives where its section says."""

from __future__ import annotations

import fnmatch
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"


def _files(section: str) -> list[str]:
    """The paths the `**Files:**` paragraph at the top of `## <section>` names, `<name>` placeholders as `*`."""
    text = DOC.read_text()
    start = text.index(f"## {section}\n")
    body = text[start:text.find("\n## ", start + 1)]
    match = re.search(r"\*\*Files:\*\*(.*?)(?:\n\n)", body, re.S)
    assert match, f"docs/extending.md's '{section}' section does not start with a **Files:** paragraph"
    return [re.sub(r"<[^>]+>", "*", path) for path in re.findall(r"`([^`]+\.(?:py|yaml))`", match.group(1))]


def _source(obj) -> str:
    return Path(inspect.getsourcefile(inspect.unwrap(obj))).resolve().relative_to(ROOT).as_posix()


def _members(section: str) -> list[tuple[str, str]]:
    """(name, file defining it) of every built-in member of the registry `section` extends."""
    if section == "A pipeline family":
        from encoder_shrink.pipelines import FAMILIES

        return [(name, _source(adapter)) for name, adapter in FAMILIES.items()]
    if section == "A loss":
        from encoder_shrink.distill.losses import LOSSES

        return [(name, _source(type(loss) if not inspect.isclass(loss) else loss)) for name, loss in LOSSES.items()]
    if section == "An export format":
        from encoder_shrink.exporters import EXPORT_FORMATS

        return [(name, _source(entry.handler)) for name, entry in EXPORT_FORMATS.items()]
    if section == "A prompt source":
        from encoder_shrink.data.sources import PROMPT_SOURCES

        return [(name, _source(reader)) for name, reader in PROMPT_SOURCES.items()]
    if section == "A metric":
        from encoder_shrink.evaluation.metrics import METRICS

        return [(name, _source(metric.scorer)) for name, metric in METRICS.items()]
    if section == "A training method":
        from encoder_shrink.training.methods import TRAINING_METHODS, registered_training_methods

        registered_training_methods()
        return [(f"{name} {part}", _source(method.resolved(part)))
                for name, method in TRAINING_METHODS.items() for part in ("recipe_class", "build", "step")]
    if section == "A command":
        return [(" ".join(words), _source(parser.get_default("func"))) for words, parser in _commands()]
    raise AssertionError(section)


def _commands(parser=None, words=()):
    """(words, leaf parser) of every subcommand."""
    import argparse

    from encoder_shrink.cli import build_parser

    parser = parser or build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*words, name))
    return found or ([(words, parser)] if words else [])


SECTIONS = ["A pipeline family", "A loss", "An export format", "A prompt source", "A metric", "A training method",
            "A command"]


@pytest.mark.parametrize("section", SECTIONS)
def test_every_named_file_exists(section):
    for pattern in _files(section):
        assert list(ROOT.glob(pattern)), f"docs/extending.md ('{section}') names {pattern}, which matches no file"


@pytest.mark.parametrize("section", SECTIONS)
def test_every_built_in_member_lives_where_the_docs_say(section):
    patterns = _files(section)
    members = _members(section)
    assert members
    misplaced = [(name, file) for name, file in members if not any(fnmatch.fnmatch(file, p) for p in patterns)]
    assert not misplaced, f"docs/extending.md ('{section}') says {patterns}; these live elsewhere: {misplaced}"


@pytest.mark.parametrize(("section", "package"), [("An export format", "exporters/__init__.py"),
                                                  ("A prompt source", "encoder_shrink/data/__init__.py"),
                                                  ("A metric", "encoder_shrink/evaluation/__init__.py")])
def test_the_one_import_line_is_there_for_every_member(section, package):
    assert package in _files(section)
    imports = (ROOT / package).read_text()
    for name, file in _members(section):
        module = file.removesuffix(".py").replace("/", ".")
        module = module if module.startswith("encoder_shrink") else f"encoder_shrink.{module}"
        assert f"from {module} import" in imports, f"{package} does not import {module} ({name})"


def test_one_file_per_export_format():
    files = [file for _, file in _members("An export format")]
    assert len(files) == len(set(files)), f"two export formats share a file ({sorted(files)})"
