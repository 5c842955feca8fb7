"""Search-space YAML -> validated :class:`StudySpec` -> trial configs per stage.

The schema is documented in ``search_spaces/README.md``. In short::

    name: norm_type
    data: {sample: {size: medium, seed: 0}}     # or root: DIR, or the five explicit paths
    seeds: [0, 1, 2]                            # fine-tuning seeds (pretraining runs once per backbone), or
                                                # {initial: 2, max: 8, budget_trials: 40}: adaptive seeds
    search: {kind: grid}                        # or {kind: tpe, num_samples: 20, metric: det/AP50}
    max_concurrent: 2
    pretrain:
      fixed: {arch: resnet50, epochs: 100}
      cases: [{prototypes: 1000}, {prototypes: 3000}]   # explicit cells (union)
      grid: {norm: [bn, gn]}                            # Cartesian axes, crossed with every case
      resources: {cpu: 8, gpu: 1, processes: 1}
    finetune:
      fixed: {epochs: 12}
      grid: {norm: [bn, frozen_bn, gn], backbone: [swav, scratch]}
    pruning: {enabled: true, patience: 3}

Everything is checked before anything runs; each error names the file, the key path and a fix
(:class:`SpaceError`, which the CLI turns into exit code 2).

The package, lowest module first (each imports only the ones above it): ``schema`` (the keys, the
dataclasses, :class:`SpaceError`), ``naming`` (trial names, hashes, sample folders, the dry-run text),
``parse`` (:func:`load_space`, study names) and ``expand`` (:func:`expand`, :func:`resolve_data`).
Import the names from here.
"""

from __future__ import annotations

from experiments.spaces.expand import expand, resolve_data
from experiments.spaces.naming import _describe_data  # private, but the tests reach it as spaces._describe_data
from experiments.spaces.naming import (axes_of, finetune_hash, finetune_name, fmt_value, format_plan, identity,
                                       pretrain_name, sample_folder, sample_layout)
from experiments.spaces.parse import (is_distribution_value, load_space, study_name_problem, suggest_field,
                                      suggest_study_name, validate_study_name)
from experiments.spaces.schema import (ADAPTIVE_KEYS, BACKBONE_SCRATCH, BACKBONE_SWAV, DATA_KEYS, DATA_PATH_KEYS, DISTRIBUTIONS,
                                       KNN_PATH_FIELDS, NON_RESULT_FIELDS, PAIRING, RESOURCE_KEYS, SEARCH_KEYS,
                                       SECTION_KEYS, STUDY_NAME_MAX, STUDY_NAME_RE, STUDY_NAME_RULE, TOP_KEYS, Cell,
                                       AdaptiveSeeds, DataSpec, Distribution, FinetuneTrial, Plan, PretrainTrial, Resources,
                                       SpaceError, StageSpec, StudySpec)

__all__ = [
    "ADAPTIVE_KEYS", "AdaptiveSeeds", "BACKBONE_SCRATCH", "BACKBONE_SWAV", "DATA_KEYS", "DATA_PATH_KEYS", "DISTRIBUTIONS", "KNN_PATH_FIELDS",
    "NON_RESULT_FIELDS", "PAIRING", "RESOURCE_KEYS", "SEARCH_KEYS", "SECTION_KEYS", "STUDY_NAME_MAX", "STUDY_NAME_RE",
    "STUDY_NAME_RULE", "TOP_KEYS", "Cell", "DataSpec", "Distribution", "FinetuneTrial", "Plan", "PretrainTrial",
    "Resources", "SpaceError", "StageSpec", "StudySpec", "axes_of", "expand", "finetune_hash", "finetune_name",
    "fmt_value", "format_plan", "identity", "is_distribution_value", "load_space", "pretrain_name", "resolve_data",
    "sample_folder", "sample_layout", "study_name_problem", "suggest_field", "suggest_study_name",
    "validate_study_name",
]
