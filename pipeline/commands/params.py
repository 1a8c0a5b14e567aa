"""`tenny params`: the params in force, every default filled in, as YAML."""

from __future__ import annotations

import yaml

from pipeline.core.params import Params


def run(params: Params, args=None) -> int:
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")
    return 0
