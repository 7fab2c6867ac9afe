"""Stage ``report@<task>``: a model card per task, structured by TRIPOD+AI and generated only from the pipeline's
own outputs, so it can never disagree with the numbers.

Three layers, one way: :mod:`~pipeline.report.inputs` reads every input (files, the MLflow registry entry of the
bundle, ``dvc.lock`` hashes); :mod:`~pipeline.report.card_data` turns them into ``card_data.json``, every number a
``{value, source}`` fact (with :mod:`~pipeline.report.analysis` and :mod:`~pipeline.report.readings` for what the card
computes or words itself); :mod:`~pipeline.report.render` puts that data through one Jinja2 template per section
(``templates/sections/``) to Markdown and the Markdown through markdown-it-py to HTML. :mod:`~pipeline.report.stage`
writes the three files atomically and logs them to MLflow.
"""

from pipeline.report.inputs import ReportParams
from pipeline.report.stage import PARAMS_USED, main

__all__ = ["PARAMS_USED", "ReportParams", "main"]
