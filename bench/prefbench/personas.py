"""PrefBench personas: simulated users with one hidden answer-style preference and their own words.

A persona never states its preference up front; it only reacts to answers. The styles are those the
built-in tiny model can express (``learner.tinycorpus.STYLES``), checked by the corpus's own checker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from learner.tinycorpus import classify_style


@dataclass(frozen=True)
class Persona:
    """A simulated user: what it wants and how it says so."""

    name: str
    style: str
    """The hidden preference: one of ``learner.tinycorpus.STYLES``."""
    directives: tuple[str, ...]
    """Corrections that say what to do ("please answer in one word")."""
    complaints: tuple[str, ...]
    """Evaluative reactions that only say the answer did not fit."""
    wordings: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Other wording families of the same corrections: (family name, directives in the user's own words)."""

    def satisfied_by(self, answer: str) -> bool:
        return classify_style(answer) == self.style

    @property
    def families(self) -> tuple[str, ...]:
        """The wording families: ``plain`` (``directives``), then the persona's own."""
        return ("plain", *(name for name, _ in self.wordings))

    def worded(self, family: str) -> Persona:
        """The same persona correcting in the words of ``family``."""
        if family == "plain":
            return self
        return replace(self, directives=dict(self.wordings)[family])

    def family_for(self, seed: int) -> str:
        """The wording family of a run: each seed in turn takes the next one."""
        return self.families[seed % len(self.families)]


THANKS: tuple[str, ...] = (
    "Thanks!", "Perfect, thank you.", "Great, that's what I needed.", "Got it, thanks.", "Nice, thanks a lot.",
    "That works for me.", "Exactly what I wanted, thanks.", "Cool, thank you!",
)
GENERIC_COMPLAINTS: tuple[str, ...] = (
    "That's not how I like my answers.", "Hmm, not really what I was looking for.", "No, that's not it.",
    "Not quite the answer I wanted.", "Meh. Try again.", "That doesn't work for me.",
)
CORRECTIONS: tuple[str, ...] = (
    "That's wrong.", "No, that's not correct.", "That's not right, try again.", "Wrong answer.",
    "That's incorrect.",
)
LOOP_COMPLAINTS: tuple[str, ...] = (
    "You keep repeating yourself.", "That's the same line over and over.", "It just repeats itself. Try again.",
)
REPHRASINGS: tuple[str, ...] = ("Let me ask again: {q}", "Again: {q}", "I'll rephrase. {q}", "Once more, {q}")
MOVE_ON: tuple[str, ...] = ("Next question. {q}", "Another one: {q}", "{q}", "Ok. {q}", "Moving on. {q}")

PERSONAS: dict[str, Persona] = {
    persona.name: persona
    for persona in (
        Persona(
            "terse", "word",
            directives=("Please answer in one word.", "One word only, please.", "Too long. Reply with a single word.",
                        "Just one word next time.", "Use just one word."),
            complaints=("Way too wordy.", "Why so long? I only need the key word.", "Too much text."),
            wordings=(("just-the-name", ("Just the name.", "Only the name, nothing else.", "Just the answer word, please.",
                                         "Hmm. Just the name next time.")),
                      ("cut-it-down", ("Too long, a single word does it.", "Cut it down to one word.",
                                       "Shorter. One word is enough."))),
        ),
        Persona(
            "quiet", "lowercase",
            directives=("Please answer in lowercase.", "Write the answer in all lowercase letters.",
                        "No capital letters please, reply in lowercase.", "Please use only lowercase."),
            complaints=("Stop shouting with capitals.", "I don't like the capital letters.",
                        "That's not the casual tone I want."),
            wordings=(("drop-the-capitals", ("Drop the capital letters.", "No caps please.", "Stop using capital letters.")),
                      ("small-letters", ("Write everything in small letters.", "Write it in small letters.",
                                         "Use small letters only."))),
        ),
        Persona(
            "listy", "bullets",
            directives=("Please reply with a bulleted list.", "Use bullet points.",
                        "Format the answer as a list of bullets, please.", "Answer as a bullet list."),
            complaints=("Hard to scan, I wanted it structured.", "A wall of text again.",
                        "This isn't structured the way I like."),
            wordings=(("dash-list", ("Make it a dash list.", "Put it in a dash list, please.", "Dashes, one item per line.")),
                      ("list-it", ("Could you list it out?", "List it, one point per line.",
                                   "Give me the answer as a list, one item per line."))),
        ),
        Persona(
            "curious", "detail",
            directives=("Please answer in detail.", "Give a complete sentence and add a detail.",
                        "Too short, reply with full sentences and a little detail."),
            complaints=("That's too thin, I want to learn more.", "Too short.", "Not enough detail."),
        ),
        Persona(
            "polite", "signoff",
            directives=("Please sign off at the end.", "Add a friendly sign-off at the end.",
                        "Close your reply with a sign-off."),
            complaints=("A bit curt, isn't it?", "That felt cold.", "No goodbye? Rude."),
        ),
    )
}
DEFAULT_PERSONAS: tuple[str, ...] = ("terse", "quiet", "listy")
