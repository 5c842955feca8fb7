"""What a study's results become: the one verdict judge (:mod:`~experiments.results.verdict`), the headline,
``ablate report`` (:mod:`~experiments.results.report`), the registry, ``pull`` and the registered models' pyfunc
code, ``ablate status``, ``ablate gc`` and the MLflow UI's views (:mod:`~experiments.results.ui`,
:mod:`~experiments.results.ui_app`). Importing the package loads none of them.
"""
