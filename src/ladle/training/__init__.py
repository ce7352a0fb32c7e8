"""Training: one fine-tuning loop with pluggable objectives, optimisers, schedules and BatchNorm policies;
sweeps from YAML configs, one executor task per run, resumable; text sweeps fine-tune Hugging Face text classifiers
(ladle.training.text) from the same kind of config.

    from ladle.training import run_sweep
    records = run_sweep("sweep.yaml", Path("out"), executor=make_executor("local:2"), store=store)
"""

from ladle.training.config import (HyperParams, Run, SweepConfig, TextSweepConfig, load_config, load_text_config,
                                   sample_hyperparams, sample_run, sample_text_run, sweep_id)
from ladle.training.loop import (BN_POLICIES, OPTIMISERS, SCHEDULES, accuracy, classifier_of, finetune, linear_probe,
                                 torch_threads, train)
from ladle.training.objectives import OBJECTIVES, Batch, CrossEntropy, Objective, random_shift
from ladle.training.sweep import RunTask, make_stock, read_record, run_sweep, sweep, train_run
from ladle.training.text import TextRunTask, run_text_sweep, train_text, train_text_run

__all__ = ["BN_POLICIES", "OBJECTIVES", "OPTIMISERS", "SCHEDULES", "Batch", "CrossEntropy", "HyperParams", "Objective",
           "Run", "RunTask", "SweepConfig", "TextRunTask", "TextSweepConfig", "accuracy", "classifier_of", "finetune",
           "linear_probe", "load_config", "load_text_config", "make_stock", "random_shift", "read_record", "run_sweep",
           "run_text_sweep", "sample_hyperparams", "sample_run", "sample_text_run", "sweep", "sweep_id",
           "torch_threads", "train", "train_run", "train_text", "train_text_run"]
