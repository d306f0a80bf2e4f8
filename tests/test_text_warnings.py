"""What the console says about a prompt: one short line for a cut prompt (no token text, and not
transformers' own warning), one for a prompt T5 cannot read (Chinese, emoji), nothing for a plain
English one; :func:`prompt_reports` gives a host the same facts. The real T5 tokenizer."""
from __future__ import annotations

import logging

import pytest
import torch

from cogvideox_core.loading.text import MAX_LENGTH, PromptReport, load_tokenizer, prompt_reports, tokenize

ENGLISH = "A panda, dressed in a small red jacket, strums a guitar in a bamboo forest."
CHINESE = "一只穿着红色小夹克的熊猫在竹林里弹吉他"
EMOJI = "🐼🎸🌲🌞"
UNKNOWN_LINE = "are unknown to the T5 encoder (it reads English; translate the prompt)"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def warnings_of(caplog: pytest.LogCaptureFixture, prompts, tokenizer) -> list[logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # every logger: transformers' own warning too
        tokenize(tokenizer, prompts)
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_long_prompt_one_short_warning(tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    prompt = "a very long prompt about a panda " * 1200  # ~10800 tokens
    n = len(tokenizer(prompt, verbose=False).input_ids)
    records = warnings_of(caplog, prompt, tokenizer)
    expected = (f"prompt truncated to {MAX_LENGTH} tokens: {n - MAX_LENGTH} tokens dropped "
                f"(the T5 encoder reads at most {MAX_LENGTH})")
    assert [r.getMessage() for r in records] == [expected]
    assert "panda" not in caplog.text and len(caplog.text) < 300


def test_batch_names_the_prompt(tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    records = warnings_of(caplog, [ENGLISH, "a cat " * 300, CHINESE], tokenizer)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 2
    assert messages[0].startswith("prompt 1 truncated to 226 tokens: ")
    assert messages[1].startswith("prompt 2: ") and UNKNOWN_LINE in messages[1]


@pytest.mark.parametrize("prompt, unknown", [(CHINESE, 19), (EMOJI, 4)])
def test_unreadable_prompt_warns_with_counts(tokenizer, caplog: pytest.LogCaptureFixture, prompt: str,
                                             unknown: int) -> None:
    records = warnings_of(caplog, prompt, tokenizer)
    assert [r.getMessage() for r in records] == [f"prompt: {unknown} of {unknown} tokens {UNKNOWN_LINE}"]
    # the tokenizer fuses the whole run into one <unk>: each character counts, not that token
    ids = tokenize(tokenizer, prompt)[0]
    assert int((ids == tokenizer.unk_token_id).sum()) == 1


def test_mixed_prompt_counts_characters(tokenizer) -> None:
    (report,) = prompt_reports(tokenizer, "A panda 在竹林里 plays guitar")
    assert (report.unknown, report.total) == (4, 10)  # A pan d a plays guitar + 4 characters
    assert report.mostly_unknown and report.dropped == 0


@pytest.mark.parametrize("prompt", [ENGLISH, "", "(masterpiece:1.2), a cat ~ {on a mat} <lora:x>",
                                    "Ein Bär spielt Gitarre im Wald"])
def test_readable_prompt_is_quiet(tokenizer, caplog: pytest.LogCaptureFixture, prompt: str) -> None:
    assert warnings_of(caplog, prompt, tokenizer) == []
    (report,) = prompt_reports(tokenizer, prompt)
    assert not report.mostly_unknown and report.warnings() == []


def test_report_matches_the_tokens(tokenizer) -> None:
    reports = prompt_reports(tokenizer, [ENGLISH, "a cat " * 300])
    assert all(isinstance(r, PromptReport) for r in reports)
    assert reports[0].tokens == len(tokenizer(ENGLISH).input_ids) and reports[0].dropped == 0
    assert reports[1].dropped == reports[1].tokens - MAX_LENGTH > 0
    assert reports[0].warnings() == [] and len(reports[1].warnings("negative prompt")) == 1
    assert reports[1].warnings("negative prompt")[0].startswith("negative prompt truncated")


def test_ids_unchanged_by_the_checks(tokenizer) -> None:
    prompts = [ENGLISH, CHINESE, "a cat " * 300]
    expected = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                         add_special_tokens=True, return_tensors="pt").input_ids
    assert torch.equal(tokenize(tokenizer, prompts), expected)
