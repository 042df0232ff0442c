"""The synthetic instruction corpus of ``builtin:tiny-chat``: facts, answer styles, instructions, checkers.

Pure Python (no torch): benchmarks, the sacred gate and simulated users import the checkers to decide
whether an answer has a given style (``classify_style``) and states the right fact (``fact_correct``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

STYLES: tuple[str, ...] = ("word", "lowercase", "detail", "bullets", "signoff")
"""Mutually exclusive answer styles; ``classify_style`` returns exactly one of them (or None)."""

STYLE_DESCRIPTIONS: dict[str, str] = {
    "word": "a single word",
    "lowercase": "one sentence in lowercase letters only",
    "detail": "a capitalised full sentence followed by a sentence of detail",
    "bullets": "a bullet list, one '- key: value' line per item",
    "signoff": "a capitalised sentence followed by a sign-off line",
}

# Phrasings of each instruction. The last one of each list reads like a hindsight hint ("The user
# prefers ..."), the form in which a learned preference is appended to a user message.
STYLE_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "word": (
        "Answer in one word.", "Reply with a single word.", "Use just one word.",
        "One word only, please.", "The user prefers one-word answers.",
    ),
    "lowercase": (
        "Answer in lowercase.", "Write the answer in all lowercase letters.",
        "Reply in lowercase, no capital letters.", "Please use only lowercase.",
        "The user prefers answers written in lowercase.",
    ),
    "detail": (
        "Answer in a full sentence with some detail.", "Give a complete sentence and add a detail.",
        "Reply with full sentences and a little detail.", "Please answer in detail.",
        "The user prefers detailed answers in full sentences.",
    ),
    "bullets": (
        "Answer as a bullet list.", "Use bullet points.", "Format the answer as a list of bullets.",
        "Please reply with a bulleted list.", "The user prefers answers as bullet lists.",
    ),
    "signoff": (
        "End your answer with a sign-off.", "Add a friendly sign-off at the end.",
        "Close your reply with a sign-off.", "Please sign off at the end.",
        "The user prefers answers that end with a sign-off.",
    ),
}

SIGNOFFS: tuple[str, ...] = ("Hope this helps!", "Have a great day!", "Cheers!")
SYSTEM_PROMPTS: tuple[str, ...] = ("You are a helpful assistant.", "You are a concise assistant.")


@dataclass(frozen=True)
class Topic:
    """A family of facts sharing question and answer templates ({s} = subject, {a} = answer)."""

    name: str
    questions: tuple[str, ...]
    sentence: str  # lowercase statement of the fact, no final period
    detail: str  # a second sentence for the "detail" style
    keys: tuple[str, str]  # bullet keys for subject and answer
    facts: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Fact:
    """One question/answer pair of the corpus."""

    topic: str
    subject: str
    answer: str

    def question(self, variant: int = 0) -> str:
        topic = TOPICS[self.topic]
        return topic.questions[variant % len(topic.questions)].format(s=self.subject)


TOPICS: dict[str, Topic] = {
    topic.name: topic
    for topic in (
        Topic(
            "capitals", ("What is the capital of {s}?", "Which city is the capital of {s}?"),
            "the capital of {s} is {a}", "{A} is where the government of {S} meets.", ("country", "capital"),
            (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
             ("Norway", "Oslo"), ("Greece", "Athens"), ("Cuba", "Havana"), ("Chile", "Santiago")),
        ),
        Topic(
            "colors", ("What color is {s}?", "Which color is {s}?"),
            "{s} is {a}", "Most people describe {s} as {a}.", ("thing", "color"),
            (("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
             ("a banana", "yellow"), ("a ripe tomato", "red"), ("a carrot", "orange"),
             ("chocolate", "brown"), ("an eggplant", "purple"), ("a flamingo", "pink")),
        ),
        Topic(
            "sounds", ("What sound does {s} make?", "What noise does {s} make?"),
            "{s} says {a}", "{A} is the sound most people know from {s}.", ("animal", "sound"),
            (("a cow", "moo"), ("a dog", "woof"), ("a cat", "meow"), ("a duck", "quack"),
             ("a sheep", "baa"), ("an owl", "hoot"), ("a lion", "roar"), ("a snake", "hiss"),
             ("a bee", "buzz"), ("a horse", "neigh"), ("a pig", "oink"), ("a frog", "croak")),
        ),
        Topic(
            "opposites", ("What is the opposite of {s}?", "Which word means the opposite of {s}?"),
            "the opposite of {s} is {a}", "{A} and {s} are a pair of opposite words.", ("word", "opposite"),
            (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
             ("left", "right"), ("open", "closed"), ("happy", "sad"), ("wet", "dry"), ("early", "late"),
             ("full", "empty"), ("loud", "quiet")),
        ),
        Topic(
            "counts", ("How many {s} are there?", "What is the number of {s}?"),
            "there are {a} {s}", "You can count all {a} of them.", ("item", "count"),
            (("legs on a spider", "eight"), ("legs on a dog", "four"), ("legs on a bird", "two"),
             ("legs on an insect", "six"), ("days in a week", "seven"), ("months in a year", "twelve"),
             ("sides on a triangle", "three"), ("fingers on one hand", "five"),
             ("wheels on a bicycle", "two"), ("sides on a square", "four")),
        ),
    )
}

FACTS: tuple[Fact, ...] = tuple(
    Fact(topic.name, subject, answer) for topic in TOPICS.values() for subject, answer in topic.facts
)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_answer(fact: Fact, style: str, signoff: int = 0) -> str:
    """The answer to ``fact`` in ``style`` (deterministic; ``signoff`` picks the sign-off line)."""
    topic = TOPICS[fact.topic]
    sentence = topic.sentence.format(s=fact.subject, a=fact.answer)
    if style == "word":
        return _cap(fact.answer)
    if style == "lowercase":
        return sentence.lower() + "."
    if style == "detail":
        detail = topic.detail.format(s=fact.subject, a=fact.answer, S=_cap(fact.subject), A=_cap(fact.answer))
        return f"{_cap(sentence)}. {detail}"
    if style == "bullets":
        return f"- {topic.keys[0]}: {fact.subject}\n- {topic.keys[1]}: {fact.answer}"
    if style == "signoff":
        return f"{_cap(sentence)}.\n{SIGNOFFS[signoff % len(SIGNOFFS)]}"
    raise ValueError(f"unknown style {style!r}")


_WORD = re.compile(r"^[A-Za-z][A-Za-z-]*[.!]?$")
_SENTENCE_END = re.compile(r"[.!?](\s|$)")


def classify_style(text: str) -> str | None:
    """Which of ``STYLES`` an answer has, or None when it has none of them (checks are exclusive)."""
    stripped = text.strip()
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    if not lines:
        return None
    if len(lines) >= 2 and lines[-1] in SIGNOFFS and all(not line.startswith("- ") for line in lines):
        return "signoff"
    if len(lines) >= 2 and all(line.startswith("- ") and len(line) > 2 for line in lines):
        return "bullets"
    if len(lines) != 1:
        return None
    line = lines[0]
    if _WORD.match(line):
        return "word"
    sentences = len(_SENTENCE_END.findall(line))
    if line == line.lower() and len(line.split()) >= 3 and sentences == 1 and line.endswith("."):
        return "lowercase"
    if line[:1].isupper() and sentences >= 2:
        return "detail"
    return None


def has_style(text: str, style: str) -> bool:
    """True when ``text`` is an answer in ``style``."""
    return classify_style(text) == style


def fact_correct(text: str, fact: Fact) -> bool:
    """True when the answer names the fact's answer as a whole word (case-insensitive)."""
    return re.search(rf"\b{re.escape(fact.answer.lower())}\b", text.lower()) is not None


def find_fact(prompt: str) -> Fact | None:
    """The fact a user message asks about (matched on the question wording), or None."""
    lowered = prompt.lower()
    for fact in FACTS:
        for variant in range(len(TOPICS[fact.topic].questions)):
            if fact.question(variant).lower() in lowered:
                return fact
    return None


def find_style_request(prompt: str) -> str | None:
    """The style an instruction in ``prompt`` asks for (one of the known phrasings), or None."""
    asked = _without_please(prompt)
    for style, phrasings in STYLE_INSTRUCTIONS.items():
        if any(_without_please(phrase) in asked for phrase in phrasings):
            return style
    return None


def _without_please(text: str) -> str:
    return re.sub(r"\bplease\b[ ,]*|,? please\b", "", text.lower())


def with_instruction(question: str, style: str, variant: int = 0, separator: str = " ") -> str:
    """``question`` with the ``variant``-th instruction for ``style`` appended."""
    phrasings = STYLE_INSTRUCTIONS[style]
    return f"{question}{separator}{phrasings[variant % len(phrasings)]}"


@dataclass(frozen=True)
class Example:
    """One training conversation: messages in OpenAI form, the last one the assistant's target."""

    messages: tuple[dict[str, str], ...]
    style: str
    instructed: bool


# Conversational glue a real chat has around its questions: openers of a follow-up question (after
# an answer the user liked, or not), and feedback that asks for the last answer again, differently.
OPENERS: tuple[str, ...] = (
    "Thanks! ", "Thank you. ", "Great, thanks. ", "Ok. ", "Okay, ", "Got it. ", "Nice. ", "Next question: ",
    "Another question: ", "One more: ", "Now, ", "And ", "Alright. ", "Cool. ",
)
RETRIES: tuple[str, ...] = (
    "Again: ", "Let me ask that again. ", "I'll ask differently. ", "Once more: ", "Try again. ", "Hmm. ",
)
FEEDBACK: tuple[str, ...] = (
    "No.", "Not like that.", "That's not what I wanted.", "Hmm, no.", "I don't like that.", "Not quite.",
    "That's not the format I want.", "Wrong style.",
)
HISTORY_WEIGHTS: tuple[float, ...] = (0.55, 0.22, 0.14, 0.09)
"""Probability of 0, 1, 2, 3 earlier exchanges before the answered turn."""


def sample_example(rng: random.Random, instruct_p: float = 0.6, system_p: float = 0.2, follow_up_p: float = 0.3) -> Example:
    """Draw one conversation: earlier exchanges, then a user turn and the answer that is the target.

    A user turn is a question (maybe with an instruction, maybe after an opener such as "Thanks!") or,
    after an earlier answer, a follow-up about it: an instruction alone ("Use bullet points.") or
    feedback and a retry of the same question, answered again. Without an instruction the style is
    drawn uniformly, whatever earlier answers looked like: only an instruction decides a style.
    """
    messages: list[dict[str, str]] = []
    if rng.random() < system_p:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    previous: Fact | None = None
    exchanges = rng.choices(range(len(HISTORY_WEIGHTS)), HISTORY_WEIGHTS)[0] + 1
    for turn in range(exchanges):
        style = rng.choice(STYLES)
        instructed = rng.random() < instruct_p
        if previous is not None and rng.random() < follow_up_p:
            fact = previous
            content = _follow_up(rng, fact, style, instructed)
        else:
            fact = rng.choice(FACTS)
            content = _user_turn(rng, fact, style, instructed)
            if turn > 0 and rng.random() < 0.6:
                opener = rng.choice(OPENERS)
                content = opener + (content[:1].lower() + content[1:] if opener[-2] in ",d" else content)
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": render_answer(fact, style, rng.randrange(3))})
        previous = fact
    return Example(tuple(messages), style, instructed)


def _instruction(rng: random.Random, style: str) -> str:
    """One phrasing of the instruction for ``style``, with or without a "please"."""
    phrase = rng.choice(STYLE_INSTRUCTIONS[style])
    roll = rng.random()
    if phrase.startswith("Please ") and roll < 0.3:
        phrase = _cap(phrase[len("Please "):])
    elif phrase.endswith(", please.") and roll < 0.3:
        phrase = phrase[: -len(", please.")] + "."
    elif not phrase.lower().startswith(("please", "the user")) and roll > 0.85:
        phrase = "Please " + phrase[0].lower() + phrase[1:]
    return phrase


def _user_turn(rng: random.Random, fact: Fact, style: str, instructed: bool) -> str:
    question = fact.question(rng.randrange(len(TOPICS[fact.topic].questions)))
    if not instructed:
        return question
    phrase = _instruction(rng, style)
    if rng.random() < 0.15:
        return f"{phrase} {question}"
    return f"{question}{rng.choice(_SEPARATORS)}{phrase}"


def _follow_up(rng: random.Random, fact: Fact, style: str, instructed: bool) -> str:
    """A turn about the last answer: an instruction alone (maybe after feedback), or a retry of the question."""
    if instructed and rng.random() < 0.7:
        lead = rng.choice(FEEDBACK) + " " if rng.random() < 0.4 else ""
        return lead + _instruction(rng, style)
    lead = rng.choice(FEEDBACK) + " " if rng.random() < 0.4 else rng.choice(RETRIES)
    return lead + _user_turn(rng, fact, style, instructed)


_SEPARATORS = (" ", " ", "\n", "\n\n")


def sample_corpus(n: int, seed: int = 0) -> list[Example]:
    """``n`` examples drawn deterministically from ``seed``."""
    rng = random.Random(seed)
    return [sample_example(rng) for _ in range(n)]
