"""Rewards: pure functions that grade a model's final answer (math, multiple choice, code).

    math_reward(response, gold)             # last \\boxed{}, math-verify against the gold answer
    choice_reward(response, "C")            # GPQA letter, from a box, an answer phrase or the last line
    await code_reward(extract_code(response), tests, pool, func_name)   # LiveCodeBench tests in the sandbox
"""

from cleaner.rewards.choice import choice_reward, extract_choice
from cleaner.rewards.code import code_reward, extract_code
from cleaner.rewards.math import extract_boxed, math_reward

__all__ = ["choice_reward", "code_reward", "extract_boxed", "extract_choice", "extract_code", "math_reward"]
