"""`make bench`: our figures and llama.cpp's, measured in the same run, printed with their ratios."""
