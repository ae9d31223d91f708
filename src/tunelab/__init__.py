"""tunelab: how much does fine-tuning a small decoder LLM buy over prompting it zero-shot?"""

__version__ = "0.1.0"
