"""Terminal frontend: the Textual triplet labeller (a thin layer over learn.labelling)."""
