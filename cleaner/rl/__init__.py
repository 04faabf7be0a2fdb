"""RL algorithms as pure tensor functions: group advantages (`advantages`), policy losses (`losses`), loss
aggregation (`aggregation`), DAPO helpers (`dapo`). The recipe that names them is `cleaner.recipe.AlgoConfig`.

Each ablation axis is a registry (a dict filled by a decorator; an unknown key raises ValueError listing the
valid ones): `advantages.ADVANTAGES`, `losses.POLICY_LOSSES`, `aggregation.AGGREGATIONS`. Defaults are the paper's
recipe: GRPO advantages, PPO clip 0.2/0.28 with dual clip 10, token-mean aggregation, no KL; rewards +1/-1 with
DAPO's overlong penalty. The lab's single-process trainer over them is `cleaner.lab.trainer`; verl's is the
cluster's. Import the modules themselves (`from cleaner.rl import losses`): this package imports nothing, so that
reading the recipe needs no tensor library.
"""
