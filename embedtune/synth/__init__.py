"""Synthetic training pairs: a local causal LM writes a query (or a paraphrase) for each of the
user's documents (`generate`, from the prompts of `templates`), and an embedding model keeps only
the queries that find their own document again (`consistency`). `run` ties them into a resumable
loop that appends each batch's rows to a pairs file `embedtune train data=files` reads."""
