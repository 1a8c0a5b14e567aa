"""The machinery behind provider ``openai``: prompt files, the request plan, the
request cache, rate limits and retries, budget, batch mode, and the parsers that
turn model quirks into counted data. The provider module
(pipeline/engines/synthesis/providers/openai_api.py) wires them together.

Nothing here imports the openai client at module top: the CLI imports every
command module at startup.
"""
