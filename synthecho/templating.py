"""The one Jinja2 environment of synthecho's documents, over the templates in `synthecho/templates/`.

The templates are package data, found through the package (importlib), so an installed wheel renders the
same cards as a checkout: `dataset_card.md` (the dataset card), `model_card.md` (the generator's model
card) and `common.md` (macros for the paragraphs that two documents share: the generator and source in
both cards, the mask fidelity in the dataset card and reports/quality.md).
"""

from __future__ import annotations

from functools import cache


def unwrap(text: str) -> str:
    """The lines of a paragraph as one line.

    Templates wrap long paragraphs for reading; the committed cards hold each of them on one line, and
    their bytes must not change, so a paragraph written over several lines goes through this filter.
    """
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@cache
def environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("synthecho", "templates"),
        undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, not a silently empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    environment.filters["unwrap"] = unwrap
    return environment


def render(template: str, **values) -> str:
    """`template` (a file name in synthecho/templates/) rendered with `values`."""
    return environment().get_template(template).render(**values)


def macro(template: str, name: str):
    """The macro `name` of `template` as a Python function returning text."""
    return getattr(environment().get_template(template).module, name)
