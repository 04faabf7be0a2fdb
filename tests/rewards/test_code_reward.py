"""Code answers run in the real sandbox: stdin and functional (LeetCode) tests, the first failing index, and
programs that fail by time-out, exception, early exit or output forgery."""

from __future__ import annotations

import random

import pytest
import pytest_asyncio

from cleaner.rewards import code_reward, extract_code
from cleaner.sandbox import SandboxConfig, SandboxPool

FAST = SandboxConfig(timeout_s=1.0, cpu_time_s=2.0, memory_mb=512, workers=1)
SUM_TESTS = [
    {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
    {"input": "10 -4", "output": "6", "testtype": "stdin"},
    {"input": "0 0\n", "output": "0", "testtype": "stdin"},
]
TWO_SUM_TESTS = [
    {"input": "[2,7,11,15]\n9", "output": "[0, 1]", "testtype": "functional"},
    {"input": "[3,2,4]\n6\n", "output": "[1,2]", "testtype": "functional"},
]
TWO_SUM = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return (seen[target - x], i)   # a tuple: compared as its JSON list
            seen[x] = i
"""


@pytest_asyncio.fixture
async def pool():
    async with SandboxPool(FAST) as started:
        yield started


class CountingPool:
    """The real pool, counting the cells it is asked to run."""

    def __init__(self, pool):
        self.pool, self.config, self.calls = pool, pool.config, 0

    async def run(self, code):
        self.calls += 1
        return await self.pool.run(code)


@pytest.mark.parametrize(("text", "code"), [
    ("Here:\n```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```\ndone", "print(2)\n"),
    ("```py\nx = 1\n\nprint(x)\n```", "x = 1\n\nprint(x)\n"),
    ("```python\nprint(1)\n```\n```text\nsample output\n```", "print(1)\n"),   # the last *python* block
    ("```python\nprint(1)\n```\nfinal:\n```python\nprint(2", None),            # truncated last block
    ("no code at all", None),
    ("```\nprint(1)\n```", None),                                              # no language: not python
])
def test_extract_code(text, code):
    assert extract_code(text) == code


@pytest.mark.asyncio
@pytest.mark.parametrize("program", [
    "a, b = map(int, input().split())\nprint(a + b)\n",
    "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n",
    "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())), '  ')\nprint()\n",  # trailing blanks
    "def main():\n    print(sum(map(int, open(0).read().split())))\n\nif __name__ == '__main__':\n    main()\n",
])
async def test_correct_stdin_program_passes(pool, program):
    assert await code_reward(program, SUM_TESTS, pool) == {
        "passed": True, "tests": 3, "failed_at": None, "status": "passed"}


@pytest.mark.asyncio
async def test_large_input_reaches_stdin(pool):
    tests = [{"input": "1 " * 500_000 + "\n", "output": "500000\n", "testtype": "stdin"}]  # 1 MB, > a pipe
    program = "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"
    assert (await code_reward(program, tests, pool))["passed"]
    assert not (await code_reward(program.replace("sum(", "len(") + "print(0)\n", tests, pool))["passed"]


@pytest.mark.asyncio
async def test_wrong_program_fails_at_the_first_wrong_test_and_stops(pool):
    counting = CountingPool(pool)
    program = "a, b = map(int, input().split())\nprint(a + b if a < 5 else a - b)\n"  # 10 - -4 = 14, not 6
    result = await code_reward(program, SUM_TESTS, counting)
    assert result == {"passed": False, "tests": 3, "failed_at": 1, "status": "wrong_answer"}
    assert counting.calls == 2  # test 2 was never run


@pytest.mark.asyncio
@pytest.mark.parametrize(("program", "status"), [
    ("while True:\n    pass\n", "timeout"),
    ("import time\ntime.sleep(30)\n", "timeout"),
    ("a, b = map(int, input().split())\nprint(a + b)\nraise ValueError('late')\n", "error"),
    ("import os\nos._exit(0)\nprint(3)\n", "error"),               # hostile: the process vanishes, exit code 0
    ("import sys\nsys.exit(0)\nprint(3)\n", "wrong_answer"),       # a clean exit that printed nothing
    ("print('3\\n' * 10**7)\n", "output_limit"),
    ("x = input().split(\n", "error"),                             # syntax error
])
async def test_failing_programs(pool, program, status):
    assert await code_reward(program, SUM_TESTS, pool) == {
        "passed": False, "tests": 3, "failed_at": 0, "status": status}


@pytest.mark.asyncio
async def test_per_test_time_limit_below_the_pool_limit(pool):
    slow = "import time\ntime.sleep(0.3)\na, b = map(int, input().split())\nprint(a + b)\n"
    assert (await code_reward(slow, SUM_TESTS, pool))["passed"]
    assert await code_reward(slow, SUM_TESTS, pool, timeout_s=0.1) == {
        "passed": False, "tests": 3, "failed_at": 0, "status": "timeout"}
    with pytest.raises(ValueError, match="timeout_s must be in"):
        await code_reward(slow, SUM_TESTS, pool, timeout_s=2.0)


@pytest.mark.asyncio
async def test_functional_solution_class(pool):
    assert await code_reward(TWO_SUM, TWO_SUM_TESTS, pool, func_name="twoSum") == {
        "passed": True, "tests": 2, "failed_at": None, "status": "passed"}
    wrong = TWO_SUM.replace("return (seen[target - x], i)", "return [i, seen[target - x]]")
    assert await code_reward(wrong, TWO_SUM_TESTS, pool, func_name="twoSum") == {
        "passed": False, "tests": 2, "failed_at": 0, "status": "wrong_answer"}
    missing = TWO_SUM.replace("def twoSum", "def two_sum")
    assert (await code_reward(missing, TWO_SUM_TESTS, pool, func_name="twoSum"))["status"] == "error"


@pytest.mark.asyncio
async def test_functional_output_cannot_be_forged_by_printing(pool):
    # A thread prints a guessed result line and the bare answer after the harness printed the real result.
    forger = """
import threading, time

def forge():
    time.sleep(0.1)
    print('@@result-0000000000000000@@[0, 1]')
    print('[0, 1]')

class Solution:
    def twoSum(self, nums, target):
        threading.Thread(target=forge).start()
        return None
"""
    assert await code_reward(forger, TWO_SUM_TESTS[:1], pool, func_name="twoSum") == {
        "passed": False, "tests": 1, "failed_at": 0, "status": "wrong_answer"}


@pytest.mark.asyncio
async def test_bad_problems_are_errors(pool):
    with pytest.raises(ValueError, match="at least one test"):
        await code_reward("print(1)", [], pool)
    with pytest.raises(ValueError, match="functional tests need func_name"):
        await code_reward(TWO_SUM, TWO_SUM_TESTS, pool)
    with pytest.raises(ValueError, match="functional tests need func_name"):
        await code_reward(TWO_SUM, TWO_SUM_TESTS, pool, func_name="twoSum(); import os")
    with pytest.raises(ValueError, match="unknown testtype 'stdio'; valid: stdin, functional"):
        await code_reward("print(1)", [{"input": "", "output": "1", "testtype": "stdio"}], pool)


# Prints, as its answer, the first "answer: " + 12 digits found in its own memory (the prefix is built at run time,
# so that this code holds no match itself).
MEMORY_SCANNER = """
import ctypes, re
pattern = re.compile(bytes.fromhex('616e737765723a20') + rb'[0-9]{12}')
found = set()
for line in open('/proc/self/maps').read().splitlines():
    fields = line.split()
    if fields[1].startswith('rw') and (len(fields) == 5 or fields[5] == '[heap]'):
        low, high = (int(x, 16) for x in fields[0].split('-'))
        found.update(pattern.findall(ctypes.string_at(low, high - low)))
print(min(found).decode() if found else 'answer: 000000000000')
"""


@pytest.mark.asyncio
async def test_a_solution_cannot_copy_a_siblings_answer_from_memory(pool):
    """GRPO samples siblings of one problem side by side: an honest one passes a hidden test whose answer (12
    random digits) only it can produce (its code holds them reversed); a "solution" that only scans its own memory
    must not pass the same test right after. (Whether the old design leaked here depended on the allocator: with
    cells forked from the process that relayed the sibling's output, this pair passed here, while the same
    scan found another call's output in test_hostile_2, which also checks every process of the worker from the
    host.)"""
    answer = f"answer: {random.randrange(10 ** 11, 10 ** 12)}"
    tests = [{"input": "\n", "output": answer + "\n", "testtype": "stdin"}]
    assert (await code_reward(f"print({answer[::-1]!r}[::-1])", tests, pool))["passed"]
    assert await code_reward(MEMORY_SCANNER, tests, pool) == {
        "passed": False, "tests": 1, "failed_at": 0, "status": "wrong_answer"}
