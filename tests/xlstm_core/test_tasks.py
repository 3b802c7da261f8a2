"""Task generators: deterministic per seed, answers equal to independent brute-force checkers, disjoint splits."""
import itertools
import re
from collections import Counter

import numpy as np
import pytest
import torch

from xlstm_core.tasks import (
    IGNORE,
    TASKS,
    CorpusConfig,
    MQARTask,
    check_disjoint,
    collect_files,
    load_corpus,
    make_mqar_split,
    make_split,
    make_task,
    pad_batch,
    sample_batch,
    valid_lengths,
)
from xlstm_core.tasks.formal import QUERY


# --- brute-force checkers, written from the task definitions and independent of the generators' code ---
def brute_parity(text: str) -> int:
    return text.count("b") % 2


def brute_cycle(moves: list[str], cycle: int = 5) -> int:
    position = 0
    for move in moves:
        position = {"+1": position + 1, "-1": position - 1, "STAY": position}[move] % cycle
    return position


def brute_arith(text: str, modulus: int = 5) -> int:
    return eval(text) % modulus  # Python's own integer arithmetic with the usual precedence


def brute_dyck(text: str) -> int:
    while True:
        shorter = text.replace("()", "").replace("[]", "")
        if shorter == text:
            return int(text == "")
        text = shorter


def brute_majority(symbols: list[int]) -> int | None:
    (top, n), *rest = Counter(symbols).most_common()
    return None if rest and rest[0][1] == n else top


def as_text(task, symbols) -> str:
    return "".join(task.symbols[s] for s in symbols)


def test_parity_cycle_dyck_exhaustive_on_short_strings():
    parity, cycle, dyck = make_task("parity"), make_task("cycle_nav"), make_task("dyck")
    for length in range(1, 9):
        for symbols in itertools.product(range(2), repeat=length):
            assert parity.answer(symbols) == brute_parity(as_text(parity, symbols))
    for length in range(1, 6):
        for symbols in itertools.product(range(3), repeat=length):
            assert cycle.answer(symbols) == brute_cycle([cycle.symbols[s] for s in symbols])
    for length in (2, 4, 6):
        for symbols in itertools.product(range(4), repeat=length):
            assert dyck.answer(symbols) == brute_dyck(as_text(dyck, symbols))


def test_modular_arithmetic_exhaustive_without_brackets():
    task = make_task("mod_arith")
    for digits in itertools.product(range(5), repeat=3):
        for ops in itertools.product(range(5, 8), repeat=2):
            symbols = [digits[0], ops[0], digits[1], ops[1], digits[2]]
            assert task.answer(symbols) == brute_arith(as_text(task, symbols))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sampled_answers_match_brute_force(name):
    task, rng = make_task(name), np.random.default_rng(0)
    for length in valid_lengths(task, 1, 45)[::3]:
        for _ in range(8):
            symbols = task.sample_input(rng, length)
            assert len(symbols) == length and all(0 <= s < len(task.symbols) for s in symbols)
            text, answer = as_text(task, symbols), task.answer(symbols)
            if name == "parity":
                assert answer == brute_parity(text)
            elif name == "cycle_nav":
                assert answer == brute_cycle([task.symbols[s] for s in symbols])
            elif name.startswith("mod_arith"):
                assert answer == brute_arith(text)
                assert name == "mod_arith_brackets" or "(" not in text
            elif name == "dyck":
                assert answer == brute_dyck(text)
            else:
                assert answer == brute_majority(symbols)  # the sampler never shows ties


def test_bracket_expressions_use_brackets_and_dyck_classes_are_balanced():
    arith, dyck, rng = make_task("mod_arith_brackets"), make_task("dyck"), np.random.default_rng(1)
    texts = [as_text(arith, arith.sample_input(rng, 21)) for _ in range(50)]
    assert sum("(" in t for t in texts) > 25
    assert all(re.fullmatch(r"[0-4+\-*()]+", t) for t in texts)
    labels = [dyck.answer(dyck.sample_input(rng, 20)) for _ in range(400)]
    assert 0.4 < np.mean(labels) < 0.6


def test_labels_reject_non_instances():
    arith, majority, dyck = make_task("mod_arith_brackets"), make_task("majority", num_symbols=3), make_task("dyck")
    assert arith.label([0, 5]) is None and arith.label([8, 1, 9]) == 1 and arith.label([8, 1]) is None
    assert majority.label([0, 1]) is None and majority.label([0, 1, 1]) == 1
    assert dyck.label([0]) is None and dyck.label([0, 1]) == 1
    with pytest.raises(ValueError, match="well-formed"):
        arith.answer([0, 5])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_are_deterministic_per_seed(name):
    task = make_task(name)
    a, b, c = (make_split(task, 3, 30, 64, seed) for seed in (7, 7, 8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, c.tokens)


def test_encoding_scores_the_query_position_only():
    task = make_task("parity")
    batch = make_split(task, 3, 9, 32, 0)
    for row in range(len(batch)):
        n = int(batch.lengths[row])
        assert batch.tokens[row, n - 1] == QUERY and (batch.tokens[row, n:] == 0).all()
        scored = (batch.targets[row] != IGNORE).nonzero().flatten().tolist()
        assert scored == [n - 1]
        symbols = (batch.tokens[row, : n - 1] - 2).tolist()
        assert batch.targets[row, n - 1] == brute_parity(as_text(task, symbols))
    assert batch.candidates.tolist() == task.candidates == [4, 5]


def test_prefix_supervision_scores_every_valid_prefix():
    task, rng = make_task("mod_arith"), np.random.default_rng(3)
    batch = sample_batch(task, [9], 16, rng, supervision="prefix")
    for row in range(len(batch)):
        symbols = (batch.tokens[row, :9] - 2).tolist()
        for i in range(8):
            expected = brute_arith(as_text(task, symbols[: i + 1])) if i % 2 == 0 else IGNORE
            assert batch.targets[row, i] == expected
        assert batch.targets[row, 8] == IGNORE and batch.targets[row, 9] == brute_arith(as_text(task, symbols))
    with pytest.raises(ValueError, match="supervision"):
        sample_batch(task, [9], 4, rng, supervision="dense")


def test_length_extrapolation_splits_never_overlap():
    check_disjoint((1, 20), (21, 60))
    for bad in [((1, 20), (20, 60)), ((5, 3), (6, 9)), ((1, 20), (30, 25))]:
        with pytest.raises(ValueError, match="train"):
            check_disjoint(*bad)
    task = make_task("dyck")
    train, test = make_split(task, 1, 20, 300, 0), make_split(task, 21, 60, 300, 1)
    assert int(train.lengths.max()) <= 21 and int(test.lengths.min()) >= 22  # + QUERY
    assert set(train.lengths.tolist()) <= {n + 1 for n in range(2, 21, 2)}
    as_rows = lambda b: {tuple(r[:n].tolist()) for r, n in zip(b.tokens, b.lengths)}
    assert not as_rows(train) & as_rows(test)
    with pytest.raises(ValueError, match="no strings"):
        valid_lengths(task, 3, 3)


def test_task_options_and_errors():
    assert make_task("cycle_nav", cycle=7).answer([0] * 8) == 1
    assert make_task("majority", num_symbols=4).vocab_size == 2 + 4 + 4
    for bad in [lambda: make_task("nope"), lambda: make_task("dyck", num_types=9),
                lambda: make_task("parity").sample_input(np.random.default_rng(0), 0),
                lambda: make_task("dyck").sample_input(np.random.default_rng(0), 3)]:
        with pytest.raises(ValueError):
            bad()


def test_mqar_answers_match_brute_force_recall():
    task = MQARTask(num_pairs=6, seq_len=40, vocab_size=33)
    batch = make_mqar_split(task, 50, seed=0)
    values = torch.tensor(task.candidates)
    for row, target in zip(batch.tokens.tolist(), batch.targets.tolist()):
        context = row[: 2 * task.num_pairs]
        keys = context[0::2]
        assert len(set(keys)) == task.num_pairs and all(1 <= k <= task.num_keys for k in keys)
        queried = [(t, y) for t, y in enumerate(target) if y != IGNORE]
        assert len(queried) == task.num_pairs and all(t >= 2 * task.num_pairs for t, _ in queried)
        assert sorted(row[t] for t, _ in queried) == sorted(keys)
        for t, y in queried:
            assert values[y] == context[context.index(row[t]) + 1]  # the value stored after the key
        assert all(row[t] == 0 for t in range(2 * task.num_pairs, 40) if target[t] == IGNORE)
    again = make_mqar_split(task, 50, seed=0)
    assert torch.equal(again.tokens, batch.tokens) and not torch.equal(make_mqar_split(task, 50, 1).tokens,
                                                                       batch.tokens)


def test_mqar_validation():
    with pytest.raises(ValueError, match="seq_len"):
        MQARTask(num_pairs=8, seq_len=20)
    with pytest.raises(ValueError, match="vocab_size"):
        MQARTask(num_pairs=8, seq_len=64, vocab_size=15)


def test_pad_batch_checks_lengths():
    with pytest.raises(ValueError, match="targets"):
        pad_batch([[1, 2]], [[1]], None)
    batch = pad_batch([[1, 2, 3], [4]], [[IGNORE, IGNORE, 0], [1]], [7, 8])
    assert batch.tokens.tolist() == [[1, 2, 3], [4, 0, 0]] and batch.slice(1, 2).tokens.shape == (1, 1)


def write_sources(root, count=12):
    for i in range(count):
        (root / f"mod_{i}.py").write_text(f"def function_{i}(x):\n    return x * {i} + {i % 3}  # número {i}\n" * 20)
    (root / "sub").mkdir()
    (root / "sub" / "notes.txt").write_text("not python")


def test_corpus_split_by_file_bpe_and_cache(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    write_sources(root)
    cfg = CorpusConfig(root=str(root), max_chars=10**6, val_fraction=0.3, vocab_size=300,
                       cache_dir=str(tmp_path / "cache"))
    train_files, val_files = collect_files(cfg)
    assert not set(train_files) & set(val_files) and len(train_files) + len(val_files) == 12
    corpus = load_corpus(cfg)
    assert corpus.vocab_size <= 300 and corpus.train.max() < corpus.vocab_size
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(corpus.tokenizer_path))
    first = (root / train_files[0]).read_text()
    assert tokenizer.decode(corpus.train[: len(tokenizer.encode(first).ids)].tolist()) == first
    assert len(corpus.train) < len(first) * len(train_files)  # BPE merges bytes
    cached = load_corpus(cfg)
    assert np.array_equal(cached.train, corpus.train) and np.array_equal(cached.val, corpus.val)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    batch = corpus.sample(3, 16, np.random.default_rng(0))
    assert torch.equal(batch.tokens[:, 1:], batch.targets[:, :-1]) and batch.candidates is None
    val = corpus.validation(1000, 16)
    assert len(val) == (len(corpus.val) - 1) // 16
    with pytest.raises(ValueError, match="validation"):
        collect_files(CorpusConfig(root=str(root), max_chars=10, val_fraction=0.01))
