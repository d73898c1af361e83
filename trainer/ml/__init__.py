"""Tailor's training core: base-model materialization, dataset validation and
tokenization, packing, and the LoRA (supervised and DPO) training loop.

Everything here runs inside the per-job child process; nothing imports the service's
database or queue, so the pieces can be tested (and benchmarked) on their own.
"""
