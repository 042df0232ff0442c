"""Word lists of the embedded judge: what approval, correction, sarcasm and tool failure look like.

Patterns are matched case-insensitively on one message at a time. Latin-script words are bounded
by word edges; CJK, Hangul and Arabic phrases are matched as substrings. Languages covered: en, fr,
de, es, it, pt, nl, ru, zh, ja, ko, ar, hi, tr, pl, sv.
"""

from __future__ import annotations

import re


def _words(*alternatives: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])(?:" + "|".join(alternatives) + r")(?![\w])", re.IGNORECASE)


def _phrases(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(alternatives), re.IGNORECASE)


POSITIVE = [
    _words(
        r"thanks?", r"thank (?:you|u)", r"thx", r"ty", r"tysm", r"cheers", r"appreciated?", r"great", r"perfect(?:ly)?",
        r"awesome", r"excellent", r"exactly", r"(?:that|it|this) (?:works|worked|did the trick)", r"works (?:now|perfectly|great|fine)",
        r"worked", r"nice", r"(?:very )?helpful", r"got it", r"cool", r"love (?:it|this)", r"brilliant", r"spot on", r"correct",
        r"that'?s (?:right|it)", r"right, of course", r"well done", r"makes sense", r"beautiful", r"lovely", r"wonderful", r"amazing",
        r"fantastic", r"superb", r"lifesaver", r"nailed it", r"you nailed", r"bingo", r"that'?s the one", r"exactly right", r"much appreciated", r"life saver", r"sounds good", r"looks good", r"all i needed", r"yep", r"yes", r"ta",
        r"loved? (?:it|them)", r"(?:it|that|this) helps?", r"helped", r"good", r"works", r"solved", r"good (?:answer|job)", r"that'?s what i (?:was looking for|needed|wanted)",
        # fr de es it pt nl sv pl tr ru
        r"merci", r"parfait", r"génial", r"super", r"ça marche", r"c'est bon", r"exactement", r"danke", r"dank", r"vielen dank", r"hat geklappt", r"perfekt", r"genau",
        r"klasse", r"prima", r"toll", r"funktioniert", r"gracias", r"perfecto", r"genial", r"excelente", r"funciona", r"exacto",
        r"está genial", r"grazie", r"perfetto", r"ottimo", r"funziona", r"obrigad[oa]", r"perfeito", r"ótimo", r"funcionou",
        r"valeu", r"dank (?:je|u)", r"bedankt", r"precies", r"tack", r"dzięki", r"dziękuję", r"świetnie", r"teşekkürler",
        r"teşekkür ederim", r"sağol", r"harika", r"mükemmel", r"спасибо", r"отлично", r"идеально", r"понятно", r"супер",
        r"धन्यवाद", r"शुक्रिया",
    ),
    _phrases(r"谢谢", r"多谢", r"太好了", r"完美", r"写得很好", r"很好", r"ありがとう", r"助かり", r"完璧", r"素晴らしい",
             r"감사", r"고마워", r"완벽", r"잘 됐", r"شكرا", r"شكراً", r"ممتاز", r"👍", r"🙏", r"❤️"),
]

NEGATIVE = [
    _words(
        r"no(?=[,.!]|\s+(?:no|that|it|this|i|you|wait|not))", r"nope", r"wrong", r"incorrect(?:ly)?", r"not (?:correct|right|true|quite|helpful)",
        r"(?:that|this|it)(?:'s| is|s) not (?:it|what|right|correct|a|the)", r"(?:isn'?t|is not|wasn'?t) what", r"not what i",
        r"i (?:meant|said|asked(?: for)?|told you|am asking|'m asking)", r"(?:^|(?<=[.!?,]\s))i wanted", r"you (?:forgot|missed|left out|skipped|omitted|dropped|didn'?t|did not|ignored|used the wrong|misread|misunderstood)",
        r"(?:doesn'?t|does not|didn'?t|did not|won'?t|can'?t) (?:work|run|compile|count|help|make sense|match|load|build|start|open|handle|cover|include|answer|fit|parse|exist)",
        r"(?:returns|does|shows|prints|outputs|gives me) nothing", r"[a-z]+error", r"exception", r"traceback", r"not working",
        r"still (?:wrong|broken|not|failing|doesn'?t)", r"try again", r"once more", r"redo", r"retry", r"start over",
        r"(?:i'?ll |let me )?rephras(?:e|ing)(?: (?:it|that|the question))?", r"(?:let me|i'?ll|i will) (?:ask|try) (?:it |that )?again",
        r"(?:^|(?<=[.!?]\s))again:",
        r"useless", r"unhelpful", r"not helpful", r"makes no sense", r"confusing", r"too (?:long|short|wordy|verbose|much|many|complicated|technical)",
        r"way too", r"\w+,\s+not\s+\w+", r"trop", r"zu (?:lang|kurz|viel)", r"demasiado", r"troppo", r"muito (?:longo|curto)", r"(?:syntax )?error", r"key ?error", r"crash(?:ed|es)?", r"fails?", r"failed", r"broken", r"gone",
        r"again[.!?]*$", r"i (?:don'?t|do not) (?:like|want|need)", r"not enough", r"not (?:how|the way) i",
        r"(?:isn'?t|is not|wasn'?t|not) (?:\w+ ){0,2}(?:the way|how) i", r"why so \w+",
        r"(?:a bit|kind of|rather|too|so|very|felt|feels|sounds|seems) (?:curt|rude|cold|dry|harsh|robotic|vague|generic|thin|off)",
        r"wall of text", r"rude", r"meh",
        r"(?:keep|kept|stop|you'?re|you are|it'?s|it is|that'?s|that is) repeating", r"repeat(?:s|ed)? (?:yourself|itself|the same)",
        r"over and over", r"(?:going|goes|go) (?:round )?in circles", r"stuck in a loop",
        r"(?:the )?same (?:thing|line|word|answer|name)s? (?:again|twice|every time)",
        r"are you sure", r"why (?:would|did) you", r"says otherwise", r"bad", r"fix (?:it|this|that)",
        r"check your", r"instead(?: of)?", r"rather than",
        r"non", r"faux", r"pas ce que", r"nein", r"falsch", r"stimmt nicht", r"funktioniert nicht", r"nochmal", r"noch einmal",
        r"eso no es", r"no es lo que", r"está mal", r"incorrecto", r"no funciona", r"otra vez", r"de nuevo", r"sbagliato",
        r"non funziona", r"di nuovo", r"errado", r"não funciona", r"erro", r"werkt niet", r"fout", r"yanlış", r"hayır",
        r"tekrar", r"çalışmıyor", r"нет", r"неправильно", r"неверно", r"не то", r"не работает", r"ошибка", r"слишком",
        r"ещё раз", r"опять", r"не так", r"गलत", r"nicht richtig", r"stimmt (?:\w+ )?nicht", r"das ist (?:so )?nicht", r"ce n'est pas", r"c'est pas", r"non è",
    ),
    _phrases(r"不对", r"错了", r"错误", r"不是", r"重新", r"没用", r"太长", r"太短", r"違い", r"間違", r"ちがう",
             r"そうじゃない", r"動かない", r"もう一度", r"やり直", r"아니", r"틀렸", r"잘못", r"다시", r"خطأ", r"غير صحيح",
             r"\?\?+", r"!!+"),
]

# praise used to mean the opposite; any of these makes the whole message negative
SARCASM = [
    _words(r"thanks for nothing", r"yeah,? right", r"sure,? because", r"captain obvious", r"genius", r"thanks i guess",
           r"(?:great|perfect|wonderful|fantastic|amazing|brilliant|lovely|cool),? (?:another|now|a (?:plan|solution|query)|it|five|zero)",
           r"oh (?:great|perfect|wonderful|fantastic|nice|sure)", r"just wow", r"totally (?:wanted|needed|asked for)", r"said no one", r"i'?ll be sure to", r"(?<=[.!]\s)not[.!]+(?=\s|$)", r"sure,? i'?ll just", r"wow,? so helpful", r"real(?:ly)? helpful", r"nice try",
           r"perfect if i wanted", r"cool cool cool", r"if i wanted to sound like", r"like i can"),
    _phrases(r"🙄", r"/s\b", r"😒", r"🤦"),
]

# phrases that look negative but are not ("no problem", "no worries")
NOT_NEGATIVE = _words(r"no (?:problem|worries|rush|pressure)", r"thanks? (?:you )?again", r"(?:see|talk to) you again", r"not bad", r"no further questions", r"nothing wrong")

TOOL_ERROR = _phrases(
    r'"error"\s*:(?!\s*(?:null|false|""|\[\]|\{\}))', r'"status"\s*:\s*"?(?:error|fail(?:ed|ure)?|[45]\d\d)\b', r'"ok"\s*:\s*false',
    r"traceback \(most recent call last\)", r"\b\w*(?:error|exception)\b\s*:", r"^error\b", r"\berror:", r"command not found",
    r"no such file", r"permission denied", r"\bcannot \w+", r"\bcan't \w+", r"is a directory", r"no module named", r"exit (?:code|status) [1-9]", r"\bhttp [45]\d\d\b", r"timed out", r"\btimeout\b",
    r"connection refused", r"unauthori[sz]ed", r"forbidden", r"\bfatal:", r"\bfailed\b", r"does not exist", r"cannot access",
    r"rate limit", r"service unavailable", r"\binvalid\b",
)
