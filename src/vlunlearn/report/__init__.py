"""Run reports (DESIGN §6): ``results.json``, ``report.md`` and figures.

- :func:`write_report`: write a run folder's results, figures and markdown report.
- :func:`render_report`: the markdown report of a results document, as a string.

Figures need the optional ``report`` extra (matplotlib); see :mod:`vlunlearn.report.figures`.
"""

from vlunlearn.report.markdown import render_report
from vlunlearn.report.writer import write_report

__all__ = ["write_report", "render_report"]
