"""prompt-tuning: prompt learning on frozen vision-language models (CLIP and its open_clip relatives)."""

__version__ = "0.1.0"
