"""The set-up: the virtual environment, torch, the requirements and detectron2 (standard
library only: it runs before anything is installed)."""
