"""Redaction before storage: the pattern table, the hook, and a secret sent through the proxy that
appears nowhere in Redis or the spool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import redis

from proxy.redact import RedactionConfigError, Redactor, luhn_valid
from tests.proxy.conftest import wait_records
from tests.security.conftest import SUITE
from tests.security.stored import everything_stored
from tests.support import figures
from tests.support.fake_upstream import FakeUpstream, Reply

PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----"
SECRETS = [
    "sk-proj-AbCdEf0123456789GhIjKlMn", "sk-ant-api03-abcdefghijklmnop1234", "ghp_" + "a1B2" * 9,
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstu", "xoxb-123456789012-abcdefABCDEF", "AKIAIOSFODNN7EXAMPLE",
    "AIzaSyA-1234567890abcdefghijklmnopqrstu", "hf_" + "x1Y2" * 9, "glpat-abcdefghij0123456789",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    PRIVATE_KEY, "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
]
# (kind, text, must disappear, must stay)
CASES = [
    ("secrets", "my key is {s}, thanks", "{s}", "my key is"),
    ("secrets", "Authorization: Bearer abc.def-123_456~xyz", "abc.def-123_456~xyz", "Authorization"),
    ("secrets", 'config: {"api_key": "Zx9-qqq-www-eee"}', "Zx9-qqq-www-eee", "config"),
    ("secrets", "password=hunter2hunter2 and more", "hunter2hunter2", "and more"),
    ("email", "write to jane.doe+news@example.co.uk today", "jane.doe+news@example.co.uk", "today"),
    ("phone", "call +44 20 7946 0958 or (555) 123-4567 now", "7946 0958", "now"),
    ("phone", "call +4915112345678", "+4915112345678", "call"),
    ("card", "card 4111 1111 1111 1111 exp", "4111 1111 1111 1111", "exp"),
    ("card", "card 5500-0000-0000-0004", "5500-0000-0000-0004", "card"),
    ("token", "session d41d8cd98f00b204e9800998ecf8427e used", "d41d8cd98f00b204e9800998ecf8427e", "used"),
]
# what the default must leave alone: ordinary prose, code, numbers, ids the records rely on
UNTOUCHED = [
    "The sky is blue; 2 + 2 = 4 and the year is 2026.", "def f(x):\n    return x * 2  # keep it simple",
    "Order 12345 shipped on 2026-12-06 at 10:30.", "version v12 of tiny-chat@v3", "ask-me-anything is a format",
    "the password is short", "email me at the usual place", "a skeleton key opens many doors",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_default_redacts_secret_like_strings(secret: str) -> None:
    scrubbed = Redactor().text(f"here: {secret} end")
    assert secret not in scrubbed and "[REDACTED:secret]" in scrubbed and scrubbed.startswith("here: ")


@pytest.mark.parametrize(("kind", "text", "gone", "kept"), CASES)
def test_each_kind_on_request(kind: str, text: str, gone: str, kept: str) -> None:
    text, gone = text.replace("{s}", SECRETS[0]), gone.replace("{s}", SECRETS[0])
    scrubbed = Redactor(kind).text(text)
    assert gone not in scrubbed and kept in scrubbed and "[REDACTED:" in scrubbed
    if kind not in {"secrets"}:
        assert Redactor().text(text) == text  # personal data is kept unless asked for


@pytest.mark.parametrize("text", UNTOUCHED)
def test_everything_on_leaves_ordinary_text_alone(text: str) -> None:
    assert Redactor("secrets,email,phone,card,token").text(text) == text


def test_card_numbers_need_a_valid_checksum() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert Redactor("card").text("ref 4111 1111 1111 1112") == "ref 4111 1111 1111 1112"


def test_hook_and_bad_configuration() -> None:
    redactor = Redactor("none", hook="tests.security.scrubber:no_names")
    assert redactor.text("Alice met Bob") == "[NAME] met Bob"
    assert not Redactor("none").active
    for kinds, hook in (("secrets,addresses", None), ("secrets", "tests.security.scrubber:missing"),
                        ("secrets", "no.such.module:fn"), ("secrets", "tests.security.scrubber:NOT_CALLABLE")):
        with pytest.raises(RedactionConfigError):
            Redactor(kinds, hook)


def test_a_secret_sent_through_the_proxy_is_stored_nowhere(start_proxy: Callable[..., str], fake: FakeUpstream,
                                                           redis_client: redis.Redis, tmp_path: Path) -> None:
    url = start_proxy(redact="secrets,email", redact_hook="tests.security.scrubber:no_names")
    secret, mail = SECRETS[0], "jane.doe@example.com"
    fake.push(Reply(content=f"Noted, Alice: your key {secret} is saved and I mailed {mail}."))
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client-1234567890abcdef", max_retries=0, timeout=10) as sdk:
        messages = [{"role": "user", "content": f"Alice here. Store {secret} and mail {mail}"}]
        reply = sdk.chat.completions.create(model="m", messages=messages, extra_headers={"X-Session-Id": "s1"})  # type: ignore[arg-type]
        assert secret in (reply.choices[0].message.content or "")  # the client's own answer is untouched
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": f"and {PRIVATE_KEY}"}]
        sdk.chat.completions.create(model="m", messages=messages, extra_headers={"X-Session-Id": "s1"})  # type: ignore[arg-type]
    turns = wait_records(redis_client, "nextstate:{rec}:turns", 2)
    assert len(turns) == 2
    assert wait_records(redis_client, "nextstate:{rec}:transitions", 1)
    stored = everything_stored(redis_client, tmp_path / "home" / "spool")
    leaked = sum(stored.count(s) for s in (secret, mail, "Alice", "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo"))
    figures.add(SUITE, "secrets found in storage after redaction", leaked)
    assert leaked == 0
    assert "[REDACTED:secret]" in stored and "[REDACTED:email]" in stored and "[NAME]" in stored
    assert turns[0]["tokens"]["prompt_token_ids"] is None  # the captured ids would spell the secret
    assert turns[1]["session_id"] == turns[0]["session_id"] == "s1"
