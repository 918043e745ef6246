"""Run a module's docstring examples (HF-style ```python fences) as doctests."""

from __future__ import annotations

import doctest


def run_docstring_examples(module) -> int:
    """Run every `>>>` example in `module`'s docstrings; assert none fails and return how many ran."""

    # The fences would otherwise be read as expected output.
    def clean(text):
        return "\n".join(line for line in text.splitlines() if line.strip() not in ("```", "```python"))

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    parser = doctest.DocTestParser()
    examples = 0
    for found in doctest.DocTestFinder().find(module):
        test = parser.get_doctest(clean(found.docstring or ""), found.globs, found.name, found.filename, found.lineno)
        examples += len([e for e in test.examples if not e.options.get(doctest.SKIP)])
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0, f"{module.__name__}: a docstring example failed (above)"
    return examples
