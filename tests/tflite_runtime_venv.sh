#!/usr/bin/env bash
# Builds .venv-tflite-runtime (tflite-runtime needs numpy<2). Filled in by the inference tier.
exit 0
