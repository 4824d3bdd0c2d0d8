"""The TinyLlama paper's evaluation tables (3: commonsense, 4: problem solving, 5: Chinese), filled from the
harness's results and laid out as the paper lays them out, with its published TinyLlama rows to compare.

Each column names the harness task (or group) and metric that stands for the paper's figure, and the shots
the paper used; the task groups in ``lit_gpt/tasks`` run them with those shots. A table's average is the
mean of its columns in percent, as the paper computes it (Table 3's TinyLlama v1.1 row: 53.63). Table 4's
figures came from InstructEval, whose prompts and scoring differ from the harness's (answers that start
with the label count, its own shot selection): its rows compare in trend, not digit for digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TASKS_FOLDER = Path(__file__).parent / "tasks"  # the task groups, passed to the harness as an include path
CODE_TASKS = ("humaneval",)  # they run the model's code: only with --allow_code_execution true


@dataclass(frozen=True)
class Column:
    title: str  # as the paper heads it
    task: str  # the harness's task or group whose result stands for it
    metric: str  # the harness's metric key, filter included
    shots: int


@dataclass(frozen=True)
class PaperTable:
    title: str
    group: str  # the task group of lit_gpt/tasks that runs it
    columns: tuple[Column, ...]
    published: dict[str, tuple[float, ...]]  # the paper's TinyLlama rows, in percent, in column order

    def average(self, figures: list[float | None]) -> float | None:
        """The mean of a row's figures, as the paper averages them; None if one is missing."""
        return None if None in figures else sum(figures) / len(figures)

    def figures(self, results: dict) -> list[float | None]:
        """The row of the harness's ``results`` (its "results" dictionary), in percent."""
        values = [results.get(column.task, {}).get(column.metric) for column in self.columns]
        return [None if value is None else 100 * float(value) for value in values]

    def markdown(self, results: dict, compare: bool = False) -> str:
        """The table with this model's row, and with ``compare`` the paper's rows under it."""
        header = "| model | " + " | ".join(f"{c.title} ({c.shots}-shot)" for c in self.columns) + " | Avg |"
        lines = [f"{self.title}", "", header, "|---" * (len(self.columns) + 2) + "|"]
        rows = [("this model", self.figures(results))]
        rows += [(f"{name} (paper)", list(figures)) for name, figures in self.published.items()] if compare else []
        for name, figures in rows:
            cells = [("-" if value is None else f"{value:.2f}") for value in [*figures, self.average(figures)]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def ran(self, results: dict) -> bool:
        return any(column.task in results for column in self.columns)


COMMONSENSE = PaperTable(
    "Table 3: commonsense reasoning, zero-shot (accuracy, %)",
    "tinyllama_commonsense",
    (
        Column("HellaSwag", "hellaswag", "acc_norm,none", 0),
        Column("Obqa", "openbookqa", "acc_norm,none", 0),
        Column("WinoGrande", "winogrande", "acc,none", 0),
        Column("ARC-c", "arc_challenge", "acc_norm,none", 0),
        Column("ARC-e", "arc_easy", "acc_norm,none", 0),
        Column("boolq", "boolq", "acc,none", 0),
        Column("piqa", "piqa", "acc_norm,none", 0),
    ),
    {
        "TinyLlama v1.0": (59.20, 36.00, 59.12, 30.12, 55.25, 57.83, 73.29),
        "TinyLlama v1.1": (61.47, 36.80, 59.43, 32.68, 55.47, 55.99, 73.56),
        "TinyLlama v1.1 Math&Code": (60.80, 36.40, 60.22, 33.87, 55.20, 57.09, 72.69),
        "TinyLlama v1.1 Chinese": (58.23, 35.20, 59.27, 31.40, 55.35, 61.41, 73.01),
    },
)
PROBLEM_SOLVING = PaperTable(
    "Table 4: problem solving (the paper: InstructEval; here: the harness's tasks)",
    "tinyllama_problem_solving",
    (
        Column("MMLU", "mmlu", "acc,none", 5),
        Column("BBH", "bbh_fewshot", "exact_match,none", 3),
        Column("HumanEval", "humaneval", "pass@1,create_test", 0),
        Column("DROP", "drop", "f1,none", 3),
    ),
    {
        "TinyLlama v1.0": (25.34, 29.65, 9.15, 15.34),
        "TinyLlama v1.1": (26.58, 29.27, 6.71, 15.21),
        "TinyLlama v1.1 Math&Code": (24.60, 26.35, 15.24, 18.54),
        "TinyLlama v1.1 Chinese": (26.35, 30.04, 4.88, 15.75),
    },
)
CHINESE = PaperTable(
    "Table 5: Chinese understanding, zero-shot (accuracy, %)",
    "tinyllama_chinese",
    (
        Column("xwinograd_zh", "xwinograd_zh", "acc,none", 0),
        Column("xstorycloze_zh", "xstorycloze_zh", "acc,none", 0),
        Column("xnli_zh", "xnli_zh", "acc,none", 0),
        Column("xcopa_zh", "xcopa_zh", "acc,none", 0),
    ),
    {
        "TinyLlama v1.0": (68.45, 54.53, 33.69, 56.80),
        "TinyLlama v1.1": (55.75, 47.98, 34.70, 51.40),
        "TinyLlama v1.1 Math&Code": (63.69, 56.32, 33.57, 57.00),
        "TinyLlama v1.1 Chinese": (74.20, 60.29, 33.77, 65.20),
    },
)
TABLES = (COMMONSENSE, PROBLEM_SOLVING, CHINESE)
ALIASES = {"tinyllama": "tinyllama_commonsense"}  # the name --tasks took before the other tables came


def paper_tables(results: dict, compare: bool = False) -> str:
    """The paper's tables for which ``results`` holds a figure, in markdown ("" if none)."""
    return "\n\n".join(table.markdown(results, compare) for table in TABLES if table.ran(results))
