"""A method's part of report.html: a template of the method's package rendered with one of the
run's JSON records. Light: jinja2 only, so method packages can use it without the report."""

from __future__ import annotations

from pathlib import Path

from ..rundir import read_record


def record_section(run_dir: Path, record: str, package: str, template: str, name: str) -> str | None:
    """``package``'s ``templates/template`` rendered with the run's ``record`` (a JSON file of
    the run directory) as ``name``; None when the run has no such record."""
    values = read_record(run_dir, record)
    if values is None:
        return None
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(loader=PackageLoader(package, "templates"), autoescape=select_autoescape())
    return environment.get_template(template).render(**{name: values})
