"""The paper's ablation (section 4.1, Table 1 and Figure 2) for any config: VAE, LVAE, LVAE+,
LVAE+ with 2L-1 stochastic layers and BIVA, and the VDVAE- and NVAE-style hierarchies,
trained from one base config for several seeds.

Each (variant, seed) is an ordinary run directory ``OUT/<variant>/seed<S>`` (resumable with
``biva train --resume``); when its training budget is spent, its best-validation checkpoint
is evaluated on the test split and ``ablation_result.json`` is written beside it. The summary
reads those files only. Several processes may work on one ablation at once: a run is taken
under an exclusive lock, so a second worker moves on to the next run instead of waiting.

- :mod:`~biva.experiments.ablation.variants`: what each variant changes in the base config;
- :mod:`~biva.experiments.ablation.runner`: planning, training and evaluating the runs;
- :mod:`~biva.experiments.ablation.step_costs`: the paired cost of a step of each variant,
  and the step each reaches on one compute budget;
- :mod:`~biva.experiments.ablation.summary`: Table 1, Figure 2 and the curves.
"""

from biva.experiments.ablation.runner import (
    RECIPE_FREE,
    RESULT_FILE,
    AblationBudget,
    AblationRun,
    AblationSettings,
    check_run_matches,
    check_same_recipe,
    config_maker,
    evaluate_run_for_ablation,
    layer_table,
    load_result,
    plan_runs,
    run_ablation,
    train_ablation,
    train_ablation_run,
    validation_curve,
)
from biva.experiments.ablation.step_costs import (
    STEP_COSTS_FILE,
    StepCostPlan,
    equal_compute_steps,
    measure_step_costs,
    value_at_step,
    write_step_costs,
)
from biva.experiments.ablation.summary import (
    plot_curves,
    plot_kl_per_layer,
    summarize,
    table_markdown,
    write_summary,
)
from biva.experiments.ablation.variants import (
    ABLATION_VARIANTS,
    NVAE_SPECTRAL_REG,
    PAPER_VARIANTS,
    ablation_model,
    ablation_train,
    doubled_depth,
)

__all__ = ["ABLATION_VARIANTS", "NVAE_SPECTRAL_REG", "PAPER_VARIANTS", "RECIPE_FREE",
           "RESULT_FILE", "STEP_COSTS_FILE", "AblationBudget", "AblationRun",
           "AblationSettings", "StepCostPlan", "ablation_model", "ablation_train",
           "check_run_matches", "check_same_recipe", "config_maker", "doubled_depth",
           "equal_compute_steps", "evaluate_run_for_ablation", "layer_table", "load_result",
           "measure_step_costs", "plan_runs", "plot_curves", "plot_kl_per_layer",
           "run_ablation", "summarize", "table_markdown", "train_ablation",
           "train_ablation_run", "validation_curve", "value_at_step", "write_step_costs",
           "write_summary"]
