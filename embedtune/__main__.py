"""`python -m embedtune ...` (used by `accelerate launch -m embedtune train ...`)."""

from embedtune.cli import main

main()
