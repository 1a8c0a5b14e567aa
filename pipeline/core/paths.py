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
DECISIONS = Path("data/reviews/decisions.jsonl")  # the one log before team review: read as reviewer "decisions"
REVIEWS_DIR = Path("data/reviews")  # one log per reviewer, <name>.jsonl (docs/review.md)
TRAIN = Path("data/final/train.jsonl")
VAL = Path("data/final/val.jsonl")
BASE_DIR = Path("models/base")
ADAPTER_DIR = Path("models/adapter")
MERGED_DIR = Path("models/merged")
GGUF_DIR = Path("models/gguf")  # export.gguf: llama.cpp files, checked in llama.cpp (EXPORT_REPORT)
DVCLIVE_DIR = Path("dvclive")
REPORTS = Path("reports")
SYNTH_REPORT = REPORTS / "synthesize.json"
DEDUPE_REPORT = REPORTS / "dedupe.json"
DEDUPE_DROPPED = REPORTS / "dedupe_dropped.jsonl"
NOVELTY = REPORTS / "novelty.csv"  # share dedupe kept per 100 input samples: when synthesis saturates
DATASET_REPORT = REPORTS / "dataset.json"
REVIEW_REPORT = REPORTS / "review.json"  # reviewer agreement (DVC metrics), written by build
TOKEN_HIST = REPORTS / "token_lengths.csv"
EVAL_REPORT = REPORTS / "eval.json"
GENERATIONS = REPORTS / "generations.jsonl"
JUDGE_REPORT = REPORTS / "judge.json"  # judged win rate, adapter over base (DVC metrics)
EXPORT_REPORT = REPORTS / "export.json"  # each GGUF file run in llama.cpp against the merged model
JUDGMENTS = REPORTS / "judgments.jsonl"  # every verdict with its reason
JUDGE_PROMPT = PROMPTS_DIR / "judge.yaml"
STATE_DIR = Path(".tenny")  # local, never in git or DVC: request cache, batch ids, checkpoints, file digests
CHECKPOINTS_DIR = STATE_DIR / "checkpoints"  # a run's scratch, outside DVC: resume point of a killed run
