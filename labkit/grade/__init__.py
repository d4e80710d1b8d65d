"""Grade many verification logs at once: findings, scores, a gradebook CSV and an HTML report.

Owns: the safe loader (size limit, UTF-8, JSON only), the rubric, the checks of one log
(schema, hash, percentiles recomputed from the raw samples, timestamps, plausibility against
the recorded hardware), the checks across logs (identical logs, raw samples shared between
learners) and the gradebook.

A log is untrusted input. The grader never executes, imports, evaluates or unpickles anything
from it; every problem with a file becomes a :class:`Finding`, never an exception, and every
string from a log is escaped in the HTML report and defused in the CSV.

The package's modules, in the order of the data flow:

- :mod:`~labkit.grade.rubric`: finding codes, :class:`Finding`, :class:`Rubric`, :func:`load_rubric`;
- :mod:`~labkit.grade.loader`: :func:`load_log_safely`, :class:`LoadedLog`, the raw sample table;
- :mod:`~labkit.grade.consistency`: :func:`recompute_metric`, percentiles and timestamps checked;
- :mod:`~labkit.grade.checks`: :func:`assess_log` with the plausibility and completeness checks;
- :mod:`~labkit.grade.copies`: the checks across logs (identical logs, copied samples);
- :mod:`~labkit.grade.gradebook`: :class:`GradeRow`, :class:`Gradebook` and its CSV and HTML files;
- :mod:`~labkit.grade.scoring`: :func:`grade_directory` and :func:`verify_logs`;

Every name below stays importable as ``labkit.grade.<name>``.
"""

from __future__ import annotations

from labkit.grade.checks import assess_log
from labkit.grade.consistency import recompute_metric
from labkit.grade.gradebook import Gradebook, GradeRow
from labkit.grade.loader import LoadedLog, load_log_safely
from labkit.grade.rubric import FINDING_CODES, Finding, Rubric, load_rubric
from labkit.grade.scoring import grade_directory, verify_logs

__all__ = [
    "FINDING_CODES",
    "Finding",
    "GradeRow",
    "Gradebook",
    "LoadedLog",
    "Rubric",
    "assess_log",
    "grade_directory",
    "load_log_safely",
    "load_rubric",
    "recompute_metric",
    "verify_logs",
]
