"""Formal-language tasks (after Delétang et al., 2023, as extended in the xLSTM paper) for length extrapolation.

Each task maps an input string over a small alphabet to one class. A sample is encoded as
`[symbol tokens..., QUERY]` and the model is scored at the QUERY position, on the task's class tokens
(supervision="final", as in the papers). supervision="prefix" also scores every position whose prefix is itself a
valid instance (e.g. the parity of each prefix): a denser training signal that makes the tasks learnable within a
few hundred steps; evaluation always uses the final answer only. Labels always come from `task.answer(symbols)`, a
direct implementation of the task's definition; samplers only decide which strings to show.

Token layout per task: 0 = PAD, 1 = QUERY ("="), then the input symbols, then the classes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from xlstm_core.tasks.batch import IGNORE, TaskBatch, pad_batch

PAD, QUERY = 0, 1
Rng = np.random.Generator


class FormalTask(ABC):
    """A classification task on strings: `symbols` is the input alphabet, `classes` the possible answers."""

    name: str
    level: str  # position in the Chomsky hierarchy (plus "counter" for counting languages)
    symbols: tuple[str, ...]
    classes: tuple[str, ...]

    def valid_length(self, length: int) -> bool:
        """Whether strings of this many symbols exist (e.g. Dyck words have even length)."""
        return length >= 1

    @abstractmethod
    def sample_input(self, rng: Rng, length: int) -> list[int]:
        """A random input string of exactly `length` symbols (indices into `symbols`)."""

    @abstractmethod
    def answer(self, symbols: Sequence[int]) -> int:
        """The class index of an input string."""

    def label(self, symbols: Sequence[int]) -> int | None:
        """answer(symbols), or None where the string is not an instance of the task (wrong length, malformed,
        ambiguous)."""
        return self.answer(symbols) if self.valid_length(len(symbols)) else None

    @property
    def vocab_size(self) -> int:
        return 2 + len(self.symbols) + len(self.classes)

    @property
    def candidates(self) -> list[int]:
        """Token id of each class."""
        start = 2 + len(self.symbols)
        return list(range(start, start + len(self.classes)))

    def encode(self, symbols: Sequence[int]) -> list[int]:
        return [2 + s for s in symbols] + [QUERY]

    def render(self, symbols: Sequence[int]) -> str:
        """Human-readable sample, e.g. '1+2*3 = 2'."""
        joiner = "" if all(len(s) == 1 for s in self.symbols) else " "
        return f"{joiner.join(self.symbols[s] for s in symbols)} = {self.classes[self.answer(symbols)]}"

    def _check_length(self, length: int) -> None:
        if not self.valid_length(length):
            raise ValueError(f"task {self.name!r} has no strings of length {length}")


class Parity(FormalTask):
    """Is the number of b's even (class 0) or odd (class 1)? Regular; needs a 2-state tracker."""

    name, level, symbols, classes = "parity", "regular", ("a", "b"), ("even", "odd")

    def sample_input(self, rng: Rng, length: int) -> list[int]:
        self._check_length(length)
        return rng.integers(0, 2, length).tolist()

    def answer(self, symbols: Sequence[int]) -> int:
        return sum(symbols) % 2


class CycleNavigation(FormalTask):
    """Moves +1 / -1 / STAY on a cycle of `cycle` positions starting at 0; answer the final position. Regular."""

    name, level = "cycle_nav", "regular"
    symbols = ("+1", "-1", "STAY")

    def __init__(self, cycle: int = 5):
        if cycle < 2:
            raise ValueError(f"cycle must be >= 2, got {cycle}")
        self.cycle = cycle
        self.classes = tuple(f"P{i}" for i in range(cycle))

    def sample_input(self, rng: Rng, length: int) -> list[int]:
        self._check_length(length)
        return rng.integers(0, 3, length).tolist()

    def answer(self, symbols: Sequence[int]) -> int:
        return sum({0: 1, 1: -1, 2: 0}[s] for s in symbols) % self.cycle


class ModularArithmetic(FormalTask):
    """Value mod `modulus` of an expression over digits 0..modulus-1 and + - * (usual precedence), optionally with
    brackets. Without brackets the language is regular, with brackets (deterministic) context-free."""

    def __init__(self, modulus: int = 5, brackets: bool = False, bracket_prob: float = 0.25):
        if modulus < 2:
            raise ValueError(f"modulus must be >= 2, got {modulus}")
        if not 0.0 <= bracket_prob < 1.0:
            raise ValueError(f"bracket_prob must lie in [0, 1), got {bracket_prob}")
        self.modulus, self.brackets, self.bracket_prob = modulus, brackets, bracket_prob
        self.name = "mod_arith_brackets" if brackets else "mod_arith"
        self.level = "context-free" if brackets else "regular"
        self.symbols = tuple(str(d) for d in range(modulus)) + ("+", "-", "*") + (("(", ")") if brackets else ())
        self.classes = tuple(str(d) for d in range(modulus))
        self._op = {modulus: "+", modulus + 1: "-", modulus + 2: "*"}
        self._open, self._close = modulus + 3, modulus + 4

    def valid_length(self, length: int) -> bool:
        return length >= 1 and length % 2 == 1  # one more digit than operators; brackets come in pairs

    def sample_input(self, rng: Rng, length: int) -> list[int]:
        self._check_length(length)
        if not self.brackets:
            out = rng.integers(0, self.modulus, length)
            out[1::2] = rng.integers(self.modulus, self.modulus + 3, length // 2)
            return out.tolist()
        out: list[int] = []
        self._sample_expression(rng, length, out)
        return out

    def _sample_expression(self, rng: Rng, length: int, out: list[int]) -> None:
        """Append a random bracketed expression of exactly `length` (odd) symbols."""
        while length >= 3:
            if rng.random() < self.bracket_prob:
                out.append(self._open)
                self._sample_expression(rng, length - 2, out)
                out.append(self._close)
                return
            left = 2 * int(rng.integers((length - 1) // 2)) + 1  # odd left part, odd right part
            self._sample_expression(rng, left, out)
            out.append(int(rng.integers(self.modulus, self.modulus + 3)))
            length -= left + 1
        out.append(int(rng.integers(0, self.modulus)))

    def answer(self, symbols: Sequence[int]) -> int:
        value, end = self._expression(symbols, 0)
        if end != len(symbols):
            raise ValueError(f"not a well-formed expression: {self.render_input(symbols)!r}")
        return value

    def label(self, symbols: Sequence[int]) -> int | None:
        try:
            return self.answer(symbols)
        except ValueError:
            return None

    def render_input(self, symbols: Sequence[int]) -> str:
        return "".join(self.symbols[s] for s in symbols)

    # recursive descent: expression := term (('+'|'-') term)*, term := factor ('*' factor)*,
    # factor := digit | '(' expression ')'
    def _expression(self, s: Sequence[int], i: int) -> tuple[int, int]:
        value, i = self._term(s, i)
        while i < len(s) and self._op.get(s[i]) in ("+", "-"):
            sign = 1 if self._op[s[i]] == "+" else -1
            term, i = self._term(s, i + 1)
            value = (value + sign * term) % self.modulus
        return value, i

    def _term(self, s: Sequence[int], i: int) -> tuple[int, int]:
        value, i = self._factor(s, i)
        while i < len(s) and self._op.get(s[i]) == "*":
            factor, i = self._factor(s, i + 1)
            value = value * factor % self.modulus
        return value, i

    def _factor(self, s: Sequence[int], i: int) -> tuple[int, int]:
        if i < len(s) and s[i] < self.modulus:
            return s[i], i + 1
        if i < len(s) and self.brackets and s[i] == self._open:
            value, i = self._expression(s, i + 1)
            if i < len(s) and s[i] == self._close:
                return value, i + 1
        raise ValueError(f"not a well-formed expression: {self.render_input(s)!r}")


class Majority(FormalTask):
    """The most frequent of `num_symbols` symbols (ties go to the smallest symbol; the sampler avoids ties).
    A counting task: not regular, but solvable with one counter per symbol."""

    name, level = "majority", "counter"

    def __init__(self, num_symbols: int = 8):
        if num_symbols < 2:
            raise ValueError(f"num_symbols must be >= 2, got {num_symbols}")
        self.symbols = self.classes = tuple(str(i) for i in range(num_symbols))

    def sample_input(self, rng: Rng, length: int) -> list[int]:
        self._check_length(length)
        while True:  # rejection keeps every shown string unambiguous
            out = rng.integers(0, len(self.symbols), length)
            counts = np.bincount(out, minlength=len(self.symbols))
            if (counts == counts.max()).sum() == 1:
                return out.tolist()

    def answer(self, symbols: Sequence[int]) -> int:
        return int(np.argmax(np.bincount(np.asarray(symbols), minlength=len(self.symbols))))

    def label(self, symbols: Sequence[int]) -> int | None:
        counts = np.bincount(np.asarray(symbols), minlength=len(self.symbols))
        return int(np.argmax(counts)) if (counts == counts.max()).sum() == 1 else None


class Dyck(FormalTask):
    """Is a string over `num_types` bracket pairs balanced (class 1) or not (class 0)? Context-free.

    Half of the samples are random balanced words, half are balanced words with one symbol replaced by another
    bracket, which breaks either the counts or the nesting of types, so the model must track the stack.
    """

    name, level, classes = "dyck", "context-free", ("unbalanced", "balanced")

    def __init__(self, num_types: int = 2):
        pairs = ("()", "[]", "{}", "<>")
        if not 1 <= num_types <= len(pairs):
            raise ValueError(f"num_types must lie in [1, {len(pairs)}], got {num_types}")
        self.symbols = tuple(ch for pair in pairs[:num_types] for ch in pair)  # open of type t = 2t, close = 2t+1

    def valid_length(self, length: int) -> bool:
        return length >= 2 and length % 2 == 0

    def sample_input(self, rng: Rng, length: int) -> list[int]:
        self._check_length(length)
        num_types = len(self.symbols) // 2
        out, stack = [], []
        for position in range(length):
            remaining = length - position
            if stack and (len(stack) == remaining or rng.random() < 0.5):
                out.append(2 * stack.pop() + 1)
            else:
                stack.append(int(rng.integers(num_types)))
                out.append(2 * stack[-1])
        if rng.random() < 0.5:
            position = int(rng.integers(length))
            out[position] = int((out[position] + rng.integers(1, len(self.symbols))) % len(self.symbols))
        return out

    def answer(self, symbols: Sequence[int]) -> int:
        stack = []
        for s in symbols:
            if s % 2 == 0:
                stack.append(s // 2)
            elif not stack or stack.pop() != s // 2:
                return 0
        return int(not stack)


TASKS: dict[str, Callable[..., FormalTask]] = {
    "parity": Parity,
    "cycle_nav": CycleNavigation,
    "mod_arith": ModularArithmetic,
    "mod_arith_brackets": lambda **kw: ModularArithmetic(brackets=True, **kw),
    "majority": Majority,
    "dyck": Dyck,
}


def make_task(name: str, **options) -> FormalTask:
    """A formal-language task by name (see TASKS), with its constructor options."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](**options)


def valid_lengths(task: FormalTask, low: int, high: int) -> list[int]:
    """The lengths in [low, high] for which the task has strings."""
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= low <= high, got low={low}, high={high}")
    lengths = [n for n in range(low, high + 1) if task.valid_length(n)]
    if not lengths:
        raise ValueError(f"task {task.name!r} has no strings with length in [{low}, {high}]")
    return lengths


def check_disjoint(train: tuple[int, int], test: tuple[int, int]) -> None:
    """Length extrapolation needs test lengths strictly above the training lengths."""
    if not (1 <= train[0] <= train[1] < test[0] <= test[1]):
        raise ValueError(f"need 1 <= train_low <= train_high < test_low <= test_high, got train={tuple(train)}, "
                         f"test={tuple(test)}")


SUPERVISION = ("final", "prefix")


def sample_batch(task: FormalTask, lengths: Sequence[int], num_samples: int, rng: Rng,
                 supervision: str = "final") -> TaskBatch:
    """`num_samples` strings with lengths drawn uniformly from `lengths`, scored at the QUERY position (and, with
    supervision="prefix", after every symbol that completes a valid prefix instance); padded to max(lengths) + 1."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if supervision not in SUPERVISION:
        raise ValueError(f"supervision must be one of {SUPERVISION}, got {supervision!r}")
    sequences, targets = [], []
    for length in rng.choice(np.asarray(lengths), num_samples):
        symbols = task.sample_input(rng, int(length))
        sequences.append(task.encode(symbols))
        if supervision == "prefix":
            prefix = [task.label(symbols[: i + 1]) for i in range(len(symbols) - 1)]
            prefix = [IGNORE if y is None else y for y in prefix]
        else:
            prefix = [IGNORE] * (len(symbols) - 1)
        targets.append(prefix + [IGNORE, task.answer(symbols)])
    return pad_batch(sequences, targets, task.candidates, PAD, width=max(lengths) + 1)


def make_split(task: FormalTask, low: int, high: int, num_samples: int, seed: int) -> TaskBatch:
    """A fixed evaluation set with lengths uniform over the valid lengths in [low, high]; deterministic per seed."""
    return sample_batch(task, valid_lengths(task, low, high), num_samples, np.random.default_rng(seed))
