"""Serving fine-tuned models: `tailor inference` starts vLLM servers (launcher.py); the
resolver plugin that runs inside vLLM is its own small distribution in vllm_plugin/."""
