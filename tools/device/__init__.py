"""The GPU device call: the pack of what the image lacks (pack.py) and the script that measures
everything there (run.sh)."""
