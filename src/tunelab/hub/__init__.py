"""Sharing a fine-tuned model: `tunelab export` (export.py) writes a Hub-ready folder with a model card
(card.py); `tunelab push` (push.py) uploads it."""
