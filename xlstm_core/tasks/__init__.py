"""Synthetic tasks and a small harness for comparing sequence models on them.

Formal languages for length extrapolation (parity, cycle navigation, modular arithmetic with and without brackets,
majority, Dyck), multi-query associative recall, and a local-text language-modelling corpus; models are built by
architecture name ("xlstm[a:b]" with a:b = mLSTM:sLSTM blocks, "transformer", "lstm") and trained with `train`.
"""
from xlstm_core.tasks.batch import IGNORE, TaskBatch, pad_batch
from xlstm_core.tasks.cache import ResultCache, fingerprint
from xlstm_core.tasks.corpus import (
                                     CorpusConfig,
                                     TokenCorpus,
                                     collect_files,
                                     load_corpus,
)
from xlstm_core.tasks.formal import (
                                     TASKS,
                                     FormalTask,
                                     check_disjoint,
                                     make_split,
                                     make_task,
                                     sample_batch,
                                     valid_lengths,
)
from xlstm_core.tasks.models import ModelSpec, build_model, parse_ratio, slstm_positions
from xlstm_core.tasks.mqar import MQARTask, make_mqar_split
from xlstm_core.tasks.report import format_mean_std, markdown_table, save_table
from xlstm_core.tasks.training import (
                                     EvalResult,
                                     TrainConfig,
                                     evaluate,
                                     learning_rate,
                                     train,
                                     train_unless_diverged,
)

__all__ = [
                                     "IGNORE",
                                     "TASKS",
                                     "CorpusConfig",
                                     "EvalResult",
                                     "FormalTask",
                                     "MQARTask",
                                     "ModelSpec",
                                     "ResultCache",
                                     "TaskBatch",
                                     "TokenCorpus",
                                     "TrainConfig",
                                     "build_model",
                                     "check_disjoint",
                                     "collect_files",
                                     "evaluate",
                                     "fingerprint",
                                     "format_mean_std",
                                     "learning_rate",
                                     "load_corpus",
                                     "make_mqar_split",
                                     "make_split",
                                     "make_task",
                                     "markdown_table",
                                     "pad_batch",
                                     "parse_ratio",
                                     "sample_batch",
                                     "save_table",
                                     "slstm_positions",
                                     "train",
                                     "train_unless_diverged",
                                     "valid_lengths",
]
