"""Where each stage reads and writes: the folder names tell the path a sample takes.

prompts → raw → deduped → reviews → final → adapter → reports. dvc.yaml names
the same paths; stages take them from here rather than from params so a path
cannot drift between the code and the pipeline definition.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
PROMPTS_DIR = Path("data/prompts")
SEED_DIR = Path("data/seed")
RAW = Path("data/raw/samples.jsonl")
DEDUPED = Path("data/deduped/samples.jsonl")
DECISIONS = Path("data/reviews/decisions.jsonl")
TRAIN = Path("data/final/train.jsonl")
VAL = Path("data/final/val.jsonl")
BASE_DIR = Path("models/base")
ADAPTER_DIR = Path("models/adapter")
MERGED_DIR = Path("models/merged")
DVCLIVE_DIR = Path("dvclive")
REPORTS = Path("reports")
SYNTH_REPORT = REPORTS / "synthesize.json"
DEDUPE_REPORT = REPORTS / "dedupe.json"
DEDUPE_DROPPED = REPORTS / "dedupe_dropped.jsonl"
NOVELTY = REPORTS / "novelty.csv"  # share dedupe kept per 100 input samples: when synthesis saturates
DATASET_REPORT = REPORTS / "dataset.json"
TOKEN_HIST = REPORTS / "token_lengths.csv"
EVAL_REPORT = REPORTS / "eval.json"
GENERATIONS = REPORTS / "generations.jsonl"
JUDGE_REPORT = REPORTS / "judge.json"  # judged win rate, adapter over base (DVC metrics)
JUDGMENTS = REPORTS / "judgments.jsonl"  # every verdict with its reason
JUDGE_PROMPT = PROMPTS_DIR / "judge.yaml"
STATE_DIR = Path(".tenny")  # local, never in git or DVC: request cache, batch ids
CHECKPOINTS_DIR = Path("models/checkpoints")  # persisted across dvc repro: resume point of a killed run
