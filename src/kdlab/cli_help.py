"""Help texts of the command line: the description that says what a command really does, and one
example per command (the epilog), kept apart from the parser so cli.py stays about parsing."""

from __future__ import annotations

import argparse
from typing import Dict

DOCS = "Docs: README.md and the docs/ folder of the kdlab repository (docs/getting-started.md first)."
EPILOG = f"Recipes: a bundled name (see `kdlab recipes`) or a path to a YAML file. {DOCS}"

DISTILL = (
    "Distill the student with --method (default hinton: total = hard_weight*CE(s, y) + soft_weight*T^2*KL(softmax(t/T) || "
    "softmax(s/T)); fitnets, at, rkd, crd, dkd, multi-teacher, self-ema add their own terms, set in the recipe's "
    "distill.<method> section or with --set distill.<method>.<key>=VALUE; see `kdlab methods`). "
    "Without --teacher the recipe's teacher comes from the teacher cache (trained and cached on first use, "
    "shared with compare and tune); its test accuracy is printed. The teacher stays frozen in eval mode. Where its "
    "outputs come from (printed by -v, recorded in run.json as teacher_source): for a method that reads logits alone "
    "on un-augmented batches, one pass over the training set before the first epoch; for a feature method (fitnets, "
    "at, rkd, crd) or augmented batches, the teacher signal store beside the teacher cache, filled by one teacher pass "
    "per stored view of each sample and reused by later runs; the teacher runs on every batch instead with "
    "--teacher-online, when the store would exceed teacher_signals.max_gb, or when batches come from a DataLoader. "
    "self-ema distils from the student's own moving average, updated every step."
)

# One example per command: what a first-time user can paste (bundled recipes, the embedded digits).
EXAMPLES: Dict[str, str] = {
    "train-teacher": "kdlab train-teacher digits-mlp --epochs 3 --out runs/teacher",
    "train-student": "kdlab train-student digits-mlp --epochs 20 --out runs/scratch",
    "distill": "kdlab distill digits-mlp --teacher runs/teacher/best.pt -T 4 --epochs 20 --out runs/distilled",
    "demo": "kdlab demo --seeds 5",
    "compare": "kdlab compare digits-mlp --losses hinton,extra-T --seeds 3 --epochs 20 --out runs/compare",
    "tune": "kdlab tune digits-mlp --param T=1:10 --trials 10 --epochs 20",
    "reproduce": "kdlab reproduce hinton2015 --seeds 3 --out runs/hinton2015",
    "layers": "kdlab layers mnist-cnn --role student",
    "export": "kdlab export runs/distilled --onnx student.onnx",
    "profile": "kdlab profile runs/distilled --threads 1",
    "methods": "kdlab methods",
    "losses": "kdlab losses",
    "doctor": "kdlab doctor my_losses.py:kd_loss -T 4",
    "explain": "kdlab explain --teacher 2.0,1.0,0.1 --student 1.8,0.9,0.4 -T 2",
    "env": "kdlab env",
    "recipes": "kdlab recipes mnist-cnn --set distill.temperature=4",
}


def epilog(command: str) -> str:
    return f"Example:\n  {EXAMPLES[command]}\n\n{EPILOG}"


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions and epilogs like argparse, except text with line breaks (the examples), kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


class CommandListFormatter(HelpFormatter):
    """`kdlab --help`: every command and its summary on one line (argparse would break the longest names)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=22)

    def add_arguments(self, actions) -> None:  # type: ignore[no-untyped-def]
        super().add_arguments(actions)
        self._action_max_length = max(self._action_max_length, self._max_help_position)
