"""Hard-negative mining: `negatives` searches and filters false negatives, `pairs` mines a pairs
file end to end (embed once, mine, build the training rows)."""
