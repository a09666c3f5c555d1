"""Every RST text of the Snakemake report renders as written.

Snakemake renders ``workflow/report/workflow.rst`` and each caption through Jinja with
``trim_blocks=True, lstrip_blocks=True`` (a block tag and the newline after it vanish), appends
its link targets, and converts the result with docutils. A missing blank line does not make
docutils complain: a list glued to the sentence before it becomes one run-on paragraph, a
heading glued to a paragraph becomes inline text followed by dashes. So these tests render the
files the same way and check both docutils' messages and the structure: every underlined line
is a section title, every ``* `` / ``1. `` line is a list item.
"""

from __future__ import annotations

import inspect
import io
import re
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml
from docutils import nodes
from docutils.core import publish_doctree

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "workflow" / "report"
CONFIGS = [ROOT / "config" / "config.yaml", ROOT / "config" / "tiny.yaml"]

# The link targets Snakemake appends to every text (snakemake/report/__init__.py, same shape).
RST_LINKS = """

.. _Workflow: javascript:show_panel('workflow')
.. _Statistics: javascript:show_panel('statistics')
{% for cat, catresults in categories|dictsort %}
.. _{{ cat }}: javascript:app.showCategory('{{ cat|urlencode }}')
{% endfor %}
{% for res in files %}
.. _{{ res.target }}: javascript:app.showResultInfo('{{ res.path|urlencode }}')
{% endfor %}
"""


def snakemake_env() -> jinja2.Environment:
    return jinja2.Environment(trim_blocks=True, lstrip_blocks=True)


def render(path: Path, config: dict) -> str:
    files = [SimpleNamespace(target="table1.csv", path="results/cxr/summary/table1.csv")]
    text = path.read_text(encoding="utf-8") + RST_LINKS
    return snakemake_env().from_string(text).render(
        snakemake=SimpleNamespace(config=config, wildcards={"dataset": "cxr"}),
        categories={"cxr": [], "ct": []}, files=files)


def doctree(rst: str, source: str) -> nodes.document:
    """docutils doctree; any message of level WARNING or above fails the test."""
    stream = io.StringIO()
    doc = publish_doctree(rst, source_path=source, settings_overrides={
        "report_level": 2, "halt_level": 5, "warning_stream": stream})
    messages = [m.astext() for m in doc.findall(nodes.system_message) if m["level"] >= 2]
    assert not stream.getvalue() and not messages, f"{source}: {stream.getvalue()} {messages}"
    return doc


def check_structure(rst: str, doc: nodes.document, source: str) -> None:
    lines = rst.splitlines()
    underlined = [lines[i - 1].strip() for i in range(1, len(lines))
                  if re.fullmatch(r"([-=~^\"'`#*+])\1{2,}", lines[i].strip())
                  and lines[i - 1].strip() and len(lines[i].strip()) >= len(lines[i - 1].strip())]
    titles = [t.astext() for t in doc.findall(nodes.title)]
    for heading in underlined:
        assert heading in titles, f"{source}: {heading!r} is not rendered as a heading"
    n_bullet = sum(bool(re.match(r"\s*\* ", ln)) for ln in lines)
    n_enum = sum(bool(re.match(r"\s*\d+\. ", ln)) for ln in lines)
    items = lambda kind: sum(len(lst.children) for lst in doc.findall(kind))  # noqa: E731
    assert items(nodes.bullet_list) == n_bullet, f"{source}: a '* ' line is not a list item"
    assert items(nodes.enumerated_list) == n_enum, f"{source}: a '1. ' line is not a list item"


def test_snakemake_still_renders_with_trim_and_lstrip_blocks():
    """If Snakemake changes its Jinja settings, these tests must be revisited."""
    from snakemake import report

    src = inspect.getsource(report.auto_report)
    assert "trim_blocks=True" in src and "lstrip_blocks=True" in src


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("rst_path", sorted(REPORT.glob("*.rst")), ids=lambda p: p.name)
def test_every_report_text_renders_as_written(rst_path, config_path):
    config = yaml.safe_load(config_path.read_text())
    rst = render(rst_path, config)
    check_structure(rst, doctree(rst, rst_path.name), rst_path.name)


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_front_page_lists_each_dataset_and_has_its_sections(config_path):
    config = yaml.safe_load(config_path.read_text())
    doc = doctree(render(REPORT / "workflow.rst", config), "workflow.rst")
    titles = [t.astext() for t in doc.findall(nodes.title)]
    for heading in ("Stages", "What ε means here", "How to read the figures"):
        assert heading in titles
    expected = [n for n, ds in config["datasets"].items() if ds.get("classifier")]
    lists = [lst for lst in doc.findall(nodes.bullet_list)
             if lst.children and lst.children[0].astext().startswith(expected[0] + " —")]
    assert len(lists) == 1
    assert [item.astext().split(" —")[0] for item in lists[0].children] == expected


def test_front_page_without_classifiers_still_renders():
    doc = doctree(render(REPORT / "workflow.rst", {"datasets": {"m": {"kind": "mammography"}}}),
                  "workflow.rst")
    assert "no dataset of this run trains a classifier" in doc.astext()
