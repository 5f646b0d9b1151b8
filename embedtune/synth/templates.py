"""What the LM is asked to write, and how its answer is cleaned into a training text.

A template turns a document into the *source* the LM sees and the pair's positive (the whole
document for ``query``; the document's leading sentences for ``paraphrase``), and into a prompt:
two worked examples, then the source, each followed by the instruction. The examples matter for
a small model: InPars (Bonifacio et al. 2022, arXiv:2202.05144) and Promptagator (Dai et al. 2022,
arXiv:2209.11755) both prompt with a few (document, query) examples, and without them
SmolLM2-135M mostly wrote about the document ("The document is designed to answer ...") instead
of a query (24 SciFact documents: 4 vs 10 found their document in the top 10 of a 500-document
pool). The price: it sometimes copies an example's answer, which `clean` rejects as an echo. The
examples are generic (not from any evaluation set), so they bias no benchmark.

With a chat model (its tokenizer has a chat template) each example is a user / assistant turn;
otherwise the prompt is plain text ending in ``Query:`` for the model to continue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Why a generation is not used, in the order they are checked (the report counts each).
REJECTIONS = ("empty", "unfinished", "too_long", "echo")


@dataclass(frozen=True)
class Template:
    """One kind of pair.

    Args:
        name: what rows and reports call it.
        instruction: the request, put after every source in a chat (before the examples in a plain prompt).
        source_label / output_label: how prompts label the source, and a plain prompt the answer.
        examples: (source, answer) pairs shown before the real source.
        symmetric: the pair's two sides are the same kind of text (a paraphrase), not a query and
            a document: the filter embeds both sides alike, and the meta file tells the trainer.
        passage_words: cut the source to its leading sentences of at most this many words (at
            least one sentence); None: the whole document.
        max_words: a cleaned answer longer than this is rejected (``too_long``).
    """

    name: str
    instruction: str
    source_label: str
    output_label: str
    examples: tuple[tuple[str, str], ...]
    symmetric: bool
    passage_words: int | None
    max_words: int

    def source(self, document: str) -> str:
        """The text the LM rewrites and the pair's positive: the document, or its leading passage."""
        if self.passage_words is None:
            return document
        return leading_passage(document, self.passage_words)

    def messages(self, source: str) -> list[dict[str, str]]:
        """The chat: each example as a user turn and the assistant's answer, then the source."""
        turns = []
        for example, answer in self.examples:
            turns += [{"role": "user", "content": self._request(example)}, {"role": "assistant", "content": answer}]
        return [*turns, {"role": "user", "content": self._request(source)}]

    def plain_prompt(self, source: str) -> str:
        """The same prompt for a model without a chat template: labelled examples, then the
        source and the answer's label for the model to continue."""
        shots = "".join(f"{self.source_label}: {example}\n{self.output_label}: {answer}\n\n" for example, answer in self.examples)
        return f"{self.instruction}\n\n{shots}{self.source_label}: {source}\n{self.output_label}:"

    def _request(self, source: str) -> str:
        """The source, then the instruction: asked before a long document, SmolLM2-135M more
        often summarised it or chatted (a probe on 24 SciFact documents, with the examples: 6 vs
        10 found their document in the top 10 of a 500-document pool greedy, 3 vs 8 sampled)."""
        return f"{self.source_label}: {source}\n\n{self.instruction}"


TEMPLATES = {
    "query": Template(
        name="query",
        instruction="Write a short search query that this document answers. Reply with the query only.",
        source_label="Document",
        output_label="Query",
        examples=(
            (
                "Coral cover on the Great Barrier Reef has halved since 1995. Surveys after the marine heatwaves of 2016, 2017 "
                "and 2020 found that small and medium colonies declined most, which limits the reef's ability to recover.",
                "why is the great barrier reef losing coral",
            ),
            (
                "Python's sorted() returns a new sorted list from any iterable; list.sort() sorts a list in place and returns None. "
                "Both accept a key function and are stable.",
                "difference between sorted and list.sort in python",
            ),
        ),
        symmetric=False,
        passage_words=None,
        max_words=32,
    ),
    "paraphrase": Template(
        name="paraphrase",
        instruction="Paraphrase this text: keep its meaning, change its wording. Reply with the paraphrase only.",
        source_label="Text",
        output_label="Paraphrase",
        examples=(
            (
                "The committee postponed its decision until more data on the drug's side effects becomes available.",
                "The panel delayed its ruling until further evidence on the medication's adverse effects is in.",
            ),
            (
                "Heavy rain flooded several roads in the city centre on Monday morning.",
                "On Monday morning, a downpour left a number of downtown streets under water.",
            ),
        ),
        symmetric=True,
        passage_words=60,
        max_words=90,
    ),
}

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Labels small models put before their answer ("Query:", "Search query -", "Paraphrase:").
ANSWER_LABEL = re.compile(r"^\s*(?:here is (?:a|the|my) )?(?:(?:search |short )?query|question|paraphrase|answer|text)\s*[:\-]\s*", re.I)
QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("`", "`"), ("**", "**"))


def leading_passage(text: str, max_words: int) -> str:
    """The document's first sentences, as many as fit in ``max_words`` words (the first one even
    when it alone is longer: then it is cut at ``max_words``)."""
    passage: list[str] = []
    for sentence in SENTENCE_END.split(text.strip()):
        words = sentence.split()
        if passage and len(" ".join(passage).split()) + len(words) > max_words:
            break
        passage.append(" ".join(words) if passage or len(words) <= max_words else " ".join(words[:max_words]))
    return " ".join(passage)


def clean(text: str, template: Template, source: str, finished: bool) -> tuple[str, str | None]:
    """The generation as a training text, and why it is rejected (one of `REJECTIONS`) or None.

    The prompt is never part of ``text`` (only new tokens are decoded); what small models add
    around the answer is removed: blank lines and lead-in lines ending in a colon ("Here is a
    search query:"), everything after the first remaining line (they go on with another
    "Document:"), an answer label such as "Query:", wrapping quotes. Then it is
    ``empty``; ``unfinished`` when the LM was cut off by max_new_tokens before ending its line
    (``finished`` False); ``too_long`` past the template's ``max_words``; ``echo`` when it
    repeats the source label, or is the source itself or one of the prompt's example answers
    (small models copy those; case and punctuation aside).
    """
    lines = [line for line in text.splitlines() if line.strip()]
    while lines and lines[0].rstrip().endswith(":"):  # a lead-in ("Here is a query that ...:"); the answer follows
        lines.pop(0)
    line = lines[0].strip() if lines else ""
    ended = finished or len(lines) > 1
    previous = None
    while line != previous:
        previous = line
        line = ANSWER_LABEL.sub("", line).strip()
        for opening, closing in QUOTES:
            if len(line) > len(opening) + len(closing) and line.startswith(opening) and line.endswith(closing):
                line = line[len(opening) : -len(closing)].strip()
    if not line:
        return line, "empty"
    if not ended:
        return line, "unfinished"
    if len(line.split()) > template.max_words:
        return line, "too_long"
    copied = {_words(source), *(_words(answer) for _, answer in template.examples)}
    if line.lower().startswith(f"{template.source_label.lower()}:") or _words(line) in copied:
        return line, "echo"
    return line, None


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))
