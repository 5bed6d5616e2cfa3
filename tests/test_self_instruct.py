"""Self-Instruct with a fake LLM: prompts, seeds, parsing, filters, instances, records, resume, CLI."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_llm import FakeLLM
from instructmill.engine.llm import SamplingOptions
from instructmill.errors import OptionError
from instructmill.methods.self_instruct import SelfInstruct, SelfInstructOptions, check_instruction
from instructmill.records import Example

ISSUE_TEXT = ("1. Instruction: List two fruits.\n1. Input:\n<noinput>\n1. Output:\nApple, pear.\n\n"
              "2. Instraction: Name a colour.\n2. Input:\n<noinput>\n2. Output:\nBlue.\n\n"
              "3. Instruction: Count to three.\n4. Input:\n<noinput>\n3. Output:\n1, 2, 3.\n\n"
              "5. Instruction: List two fruits.\n5. Input:\n<noinput>\n5. Output:\nApple, pear.")

SEEDS = [Example("Give three tips for staying healthy.", "", "Eat well, sleep, move."),
         Example("Sort the given list ascendingly.", "[3, 1, 2]", "[1, 2, 3]"),
         Example("Name a famous painter from Spain."),
         Example("Explain what a haiku is in one sentence."),
         Example("Suggest a title for a story about a lost dog."),
         Example("Translate the sentence into French.", "I like tea.", "J'aime le thé."),
         Example("Write a limerick about a cat who loves soup."),
         Example("What is the capital of Australia?", "", "Canberra.")]

VERBS = ["Describe", "Explain", "Summarize", "List", "Compare", "Name", "Suggest", "Rewrite", "Classify",
         "Outline", "Give", "Invent"]
TOPICS = ["volcanoes", "tea ceremonies", "bicycle repair", "tax forms", "chess openings", "bread baking",
          "glaciers", "jazz history", "robots", "moths", "sailing knots", "origami", "comets", "cheese",
          "bridges", "salt", "owls", "dice games", "tides", "ink"]


def task_rule(prompt: str, seed: int | None) -> str:
    """Continues a Self-Instruct list prompt with 4 tasks (some repeats); answers chat turns."""
    if "<|user|>" in prompt:
        question = prompt.split("<|user|>")[-1].split("<|end|>")[0]
        return f"Answer to: {question}"
    if prompt.startswith("Come up with an example input"):
        task = prompt.rsplit("Task: ", 1)[1]
        return " <noinput>" if "Name" in task else " a b c"
    rng = random.Random(seed)
    k = int(re.search(r"(\d+)\.$", prompt).group(1))
    lines = []
    for i in range(4):
        lines.append(f"{rng.choice(VERBS)} {rng.randint(2, 9)} facts about {rng.choice(TOPICS)} "
                     f"and {rng.choice(TOPICS)} for {rng.choice(['kids', 'experts', 'tourists'])}.")
    return " " + "\n".join(f"{k + i}. {line}" if i else line for i, line in enumerate(lines))


def records_of(method, seeds=SEEDS, num=20, **kwargs):
    return [rec for batch in method.run(seeds, num, **kwargs) for rec in batch]


# ------------------------------------------------------------------------------ the issue cases

def test_issue_text_kept_lenient_and_duplicate_dropped():
    llm = FakeLLM(lambda prompt, seed: ISSUE_TEXT if "List of" in prompt else "Answer.")
    opts = SelfInstructOptions(prompt_style="alpaca", prompts_per_round=1, max_rounds=1,
                               sampling=SamplingOptions(n=1, temperature=0.7))
    recs = records_of(SelfInstruct(llm, opts), num=3)
    by_id = {r.id: r for r in recs}
    assert list(by_id) == ["si-0-0-0-0", "si-0-0-0-1", "si-0-0-0-2", "si-0-0-0-3"]
    first, second, third, fifth = recs
    assert (first.status, first.example.instruction, first.example.input, first.example.output) == (
        "ok", "List two fruits.", "", "Apple, pear.")
    assert (second.status, second.example.instruction, second.example.output) == ("ok", "Name a colour.", "Blue.")
    assert second.extra["parse_warnings"] == ["label 'Instraction' read as 'instruction'"]
    assert (third.status, third.example.output) == ("ok", "1, 2, 3.")
    assert third.extra["parse_warnings"] == ["numbering: item 3 has its input label numbered 4"]
    assert fifth.status == "rouge_duplicate"
    assert fifth.extra["matched"] == "List two fruits." and fifth.extra["rouge_l"] == 1.0
    assert fifth.extra["raw"].startswith("5. Instruction: List two fruits.")
    # alpaca items came with outputs: no output generation was needed
    assert len(llm.calls) == 1
    assert all(r.method == "self_instruct" and r.settings["backend"] == "fake" and r.settings["seed"] == 0
               for r in recs)


def test_sample_level_parse_error_json_and_truncation():
    texts = {0: "Sure! Here you go:",
             1: '```json\n{"instruction": "Name two rivers in Asia.", "input": "", "output": "Ganges, Mekong."}\n'
                '```\nHope this helps!',
             2: "Describe the smell of rain in detail.\n10. Write a very long poem about " + "sea " * 60}
    llm = FakeLLM(lambda prompt, seed: texts[seed] if not "<|user|>" in prompt else "An answer.")
    opts = SelfInstructOptions(prompts_per_round=1, max_rounds=1,
                               sampling=SamplingOptions(n=3, temperature=0.7, max_tokens=40))
    recs = {r.id: r for r in records_of(SelfInstruct(llm, opts), num=10)}
    bad = recs["si-0-0-0"]
    assert bad.status == "parse_error" and bad.extra["raw"] == "Sure! Here you go:" and bad.extra["seed"] == 0
    json_rec = recs["si-0-0-1-0"]
    assert (json_rec.status, json_rec.example.instruction, json_rec.example.output) == (
        "ok", "Name two rivers in Asia.", "Ganges, Mekong.")
    assert recs["si-0-0-2-0"].status == "ok"
    assert recs["si-0-0-2-0"].example.instruction == "Describe the smell of rain in detail."
    assert recs["si-0-0-2-0"].example.output == "An answer."
    cut = recs["si-0-0-2-1"]
    assert cut.status == "truncated" and cut.extra["raw"].startswith("10. Write a very long poem")
    assert set(recs) == {"si-0-0-0", "si-0-0-1-0", "si-0-0-2-0", "si-0-0-2-1"}


@pytest.mark.parametrize("text,status", [
    ("List two fruits.", None), ("Be nice.", "too_short"), ("", "empty"), (" ".join(["word"] * 151), "too_long"),
    ("Describe the image below in detail.", "blacklisted"), ("Plot the sales numbers per month.", "blacklisted"),
    ("Tell me how to go to the station.", "blacklisted"), ("Write a program that sorts numbers.", "blacklisted"),
    ("Summarize the mapping between keys.", None),  # 'map' only as a whole word
    ("- Name three birds quickly.", "bad_start"), ("«Name three birds» please now.", "bad_start"),
    ("Écris un poème sur la mer.", "bad_start"),
])
def test_rule_filters(text, status):
    found = check_instruction(text, SelfInstructOptions())
    assert (found[0] if found else None) == status


def test_rule_filter_options():
    opts = SelfInstructOptions(min_words=1, max_words=3, blacklist=("tea",), ascii_start=False,
                               reject_write_a_program=False)
    assert check_instruction("Écris un poème.", opts) is None
    assert check_instruction("Brew green tea.", opts)[0] == "blacklisted"
    assert check_instruction("Describe the image.", opts) is None
    assert check_instruction("Write a program now.", opts)[0] == "too_long"


# ------------------------------------------------------------------------------- the full loop

def test_rounds_reach_target_with_seeded_samples_and_consistent_counts():
    llm = FakeLLM(task_rule)
    opts = SelfInstructOptions(prompts_per_round=4, seed=7, sampling=SamplingOptions(n=2, temperature=0.7))
    si = SelfInstruct(llm, opts)
    recs = records_of(si, num=45)
    ok = [r for r in recs if r.status == "ok"]
    assert len(ok) >= 45 and si.summary["ok"] == len(ok) and si.summary["rounds"] >= 2
    assert len({r.id for r in recs}) == len(recs)
    # every sample has its own seed: seed + (round * prompts_per_round + prompt) * n + sample
    gen_calls = [params for prompt, params in llm.calls if prompt.startswith("Come up with a series")]
    seeds = [p.seed for p in gen_calls]
    assert len(seeds) == len(set(seeds)) == si.summary["samples"]
    assert sorted(seeds) == [7 + i for i in range(len(seeds))]
    for r in recs:
        assert r.extra["seed"] == 7 + (r.extra["round"] * 4 + r.extra["prompt"]) * 2 + r.extra["sample"]
    # counts: every parsed item is a record; discards by reason add up
    assert si.summary["parsed"] == len(recs)
    assert sum(si.summary["discarded"].values()) == len(recs) - len(ok)
    assert si.summary["kept"] == len(ok)
    assert set(si.summary["discarded"]) <= {"rouge_duplicate", "blacklisted", "too_short"}
    assert si.summary["discarded"].get("rouge_duplicate", 0) > 0
    # kept instructions are pairwise below the ROUGE-L threshold, and below it against the seeds
    from instructmill.methods.rouge import rouge_l
    kept = [r.example.instruction for r in ok]
    for i, a in enumerate(kept):
        assert all(rouge_l(a, b) < 0.7 for b in kept[:i] + [s.instruction for s in SEEDS])
    for r in ok:
        assert r.example.output == f"Answer to: {r.example.instruction}"
    # prompts mix seeds and machine instructions after the first round
    later = [p for p, _ in llm.calls if p.startswith("Come up with a series")][-1]
    listed = re.findall(r"^\d+\. (.*)$", later, re.M)
    assert len(listed) == 8 and sum(t in kept for t in listed) == 2


def test_same_seed_same_records_other_seed_other_records():
    def run(seed):
        opts = SelfInstructOptions(prompts_per_round=3, seed=seed)
        return [(r.id, r.status, r.example.instruction) for r in records_of(SelfInstruct(FakeLLM(task_rule), opts), num=10)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_resume_from_a_partial_run_gives_the_same_records():
    opts = SelfInstructOptions(prompts_per_round=2, seed=3, sampling=SamplingOptions(n=1, temperature=0.7))
    full_llm = FakeLLM(task_rule)
    full = records_of(SelfInstruct(full_llm, opts), num=20)
    rounds = sorted({r.extra["round"] for r in full})
    assert len(rounds) >= 3
    for crash_round, fraction in ((1, 0.5), (2, 0.0), (1, 1.0)):
        # rounds before crash_round fully written, crash_round written up to `fraction`
        part = [r for r in full if r.extra["round"] == crash_round]
        written = [r for r in full if r.extra["round"] < crash_round] + part[:int(len(part) * fraction)]
        done = [{"id": r.id, "status": r.status, "instruction": r.example.instruction, "extra": r.extra}
                for r in written]
        llm = FakeLLM(task_rule)
        si = SelfInstruct(llm, opts)
        rest = records_of(si, num=20, done=done)
        assert {r.id for r in rest}.isdisjoint({r.id for r in written})
        combined = sorted((r.id, r.status, r.example.instruction, r.example.output) for r in written + rest)
        assert combined == sorted((r.id, r.status, r.example.instruction, r.example.output) for r in full)
        # generation restarts at the first round not fully written, with the same prompts
        restart = crash_round + 1 if fraction == 1.0 else crash_round
        prompts = [p for p, _ in llm.calls if p.startswith("Come up with a series")]
        full_prompts = [p for p, _ in full_llm.calls if p.startswith("Come up with a series")]
        assert prompts == full_prompts[restart * 2:]


def test_resume_when_the_written_part_of_the_last_round_already_reaches_the_target():
    # The crash left the last round half written, and that half already holds enough ok records:
    # an uninterrupted run wrote the whole round, so the resumed run must write the rest of it.
    opts = SelfInstructOptions(prompts_per_round=4, seed=5, sampling=SamplingOptions(n=2, temperature=0.7),
                               size_last_round=True)
    num = 20
    full = records_of(SelfInstruct(FakeLLM(task_rule), opts), num=num)
    last = max(r.extra["round"] for r in full)
    before = [r for r in full if r.extra["round"] < last]
    part = [r for r in full if r.extra["round"] == last]
    ok_before = sum(r.status == "ok" for r in before)
    assert ok_before < num
    cut = next(i for i in range(len(part) + 1) if ok_before + sum(r.status == "ok" for r in part[:i]) >= num)
    assert cut < len(part), "the last round must hold records after the target is reached"
    written = before + part[:cut]
    done = [{"id": r.id, "status": r.status, "instruction": r.example.instruction, "extra": r.extra}
            for r in written]
    rest = records_of(SelfInstruct(FakeLLM(task_rule), opts), num=num, done=done)
    assert sorted(r.id for r in rest) == sorted(r.id for r in part[cut:])
    combined = sorted((r.id, r.status, r.example.instruction) for r in written + rest)
    assert combined == sorted((r.id, r.status, r.example.instruction) for r in full)


def test_last_round_is_sized_to_what_is_still_needed():
    def rule(prompt, seed):
        if "<|user|>" in prompt:
            return "Fine."
        k = int(re.search(r"(\d+)\.$", prompt).group(1))
        items = [f"Explain w{seed}a{i} w{seed}b{i} w{seed}c{i} now." for i in range(4)]
        return " " + "\n".join(f"{k + i}. {t}" if i else t for i, t in enumerate(items))

    llm = FakeLLM(rule)
    opts = SelfInstructOptions(prompts_per_round=4, sampling=SamplingOptions(n=1, temperature=0.7))
    recs = records_of(SelfInstruct(llm, opts), num=20)
    # round 0: 4 prompts x 4 kept = 16; 4 more needed at 4 per prompt (+30%) -> 2 prompts
    assert [r.extra["round_prompts"] for r in recs] == [4] * 16 + [2] * 8
    assert sum(r.status == "ok" for r in recs) == 24
    opts = SelfInstructOptions(prompts_per_round=4, size_last_round=False, sampling=SamplingOptions(n=1))
    assert len(records_of(SelfInstruct(FakeLLM(rule), opts), num=20)) == 32


def test_prompt_too_long_and_instance_failures_are_records():
    llm = FakeLLM(task_rule, max_model_len=50)
    opts = SelfInstructOptions(prompts_per_round=2, max_rounds=1, sampling=SamplingOptions(n=2))
    recs = records_of(SelfInstruct(llm, opts), num=5)
    assert [(r.id, r.status) for r in recs] == [(f"si-0-{p}-{s}", "prompt_too_long") for p in range(2) for s in range(2)]
    assert "max_model_len 50" in recs[0].extra["detail"]

    def rule(prompt, seed):
        if "<|user|>" in prompt:
            return "" if "rivers" in prompt else "word " * 300
        return " Name three rivers of Europe.\n10. Describe how bread rises in an oven."

    recs = records_of(SelfInstruct(FakeLLM(rule), SelfInstructOptions(
        prompts_per_round=1, max_rounds=1, sampling=SamplingOptions(n=1),
        instance_sampling=SamplingOptions(max_tokens=20))), num=2)
    assert [(r.example.instruction, r.status) for r in recs] == [
        ("Name three rivers of Europe.", "empty_output"), ("Describe how bread rises in an oven.", "output_truncated")]
    recs = records_of(SelfInstruct(FakeLLM(rule), SelfInstructOptions(
        prompts_per_round=1, max_rounds=1, sampling=SamplingOptions(n=1), keep_truncated_outputs=True,
        instance_sampling=SamplingOptions(max_tokens=20))), num=2)
    assert recs[1].status == "ok" and len(recs[1].example.output.split()) == 20


def test_output_requests_carry_the_system_message():
    for system, expected in (("Answer in at most a few sentences.", "<|system|>Answer in at most a few sentences.<|end|>"),
                             ("Be terse.", "<|system|>Be terse.<|end|>"), (None, "")):
        llm = FakeLLM(task_rule)
        opts = SelfInstructOptions(prompts_per_round=1, max_rounds=1, instance_system=system)
        [r for r in records_of(SelfInstruct(llm, opts), num=1)]
        outputs = [p for p, _ in llm.calls if "<|user|>" in p]
        assert outputs and all(p.startswith(expected + "<|user|>") for p in outputs)
    assert SelfInstructOptions().instance_system == "Answer in at most a few sentences."


def test_input_first_instances():
    llm = FakeLLM(task_rule)
    opts = SelfInstructOptions(prompts_per_round=2, max_rounds=1, instances="input_first")
    recs = [r for r in records_of(SelfInstruct(llm, opts), num=3) if r.status == "ok"]
    assert recs
    for r in recs:
        expected_input = "" if "Name" in r.example.instruction else "a b c"
        assert r.example.input == expected_input
        user = f"{r.example.instruction}\n\n{expected_input}".strip()
        assert r.example.output == f"Answer to: {user}"
    input_prompts = [p for p, _ in llm.calls if p.startswith("Come up with an example input")]
    assert len(input_prompts) == len(recs) and input_prompts[0].endswith("Input:")


def test_chat_prompt_and_alpaca_prompt_shapes():
    si = SelfInstruct(FakeLLM(task_rule), SelfInstructOptions(chat=True))
    prompt, lead = si.build_prompt(SEEDS[:3])
    assert prompt[0]["role"] == "user" and prompt[0]["content"].endswith("\n4.") and lead == "4."
    si = SelfInstruct(FakeLLM(task_rule), SelfInstructOptions(prompt_style="alpaca"))
    prompt, lead = si.build_prompt(SEEDS[:2])
    assert "List of 10 tasks" in prompt and lead == "3. Instruction:"
    assert "###\n2. Instruction: Sort the given list ascendingly.\n2. Input:\n[3, 1, 2]\n2. Output:\n[1, 2, 3]\n" in prompt
    assert "1. Input:\n<noinput>\n" in prompt and prompt.endswith("###\n3. Instruction:")


def test_bad_options():
    with pytest.raises(OptionError, match="prompt_style"):
        SelfInstructOptions(prompt_style="chatty")
    with pytest.raises(OptionError, match="max_words"):
        SelfInstructOptions(min_words=5, max_words=4)
    with pytest.raises(OptionError, match="instance_sampling.n"):
        SelfInstructOptions(instance_sampling=SamplingOptions(n=2))
    with pytest.raises(OptionError, match="seed_tasks"):
        list(SelfInstruct(FakeLLM(task_rule)).run([Example("  ")], 5))
    assert SelfInstructOptions(prompt_style="alpaca").num_seed_in_prompt == 3


# ------------------------------------------------------------------------------------ CLI

@pytest.fixture
def fake_backend(monkeypatch):
    created = []

    def load_llm(backend, model, options, **kwargs):
        llm = FakeLLM(task_rule, model=model or "embedded", options=options)
        created.append((backend, model, options))
        return llm

    import instructmill.models.llm_backends as backends
    monkeypatch.setattr(backends, "load_llm", load_llm)
    return created


def lines(path):
    path = Path(path)
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.exists() else []


def test_cli_self_instruct_writes_outputs_discards_and_resumes(tmp_path, fake_backend):
    from instructmill.cli import cli

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"seed_task_{i}", "instruction": ex.instruction,
                                         "instances": [{"input": ex.input, "output": ex.output}]}) + "\n"
                             for i, ex in enumerate(SEEDS)))
    out = tmp_path / "si.jsonl"
    args = ["self-instruct", str(seeds), "-o", str(out), "--num-instructions", "12", "--prompts-per-round", "2",
            "--seed", "5", "--backend", "transformers", "--n", "3", "--max-num-seqs", "8"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    backend, model, engine = fake_backend[0]
    assert backend == "transformers" and model is None and engine.seed == 5 and engine.max_num_seqs == 8
    ok, discards = lines(out), lines(tmp_path / "si.discards.jsonl")
    assert len(ok) >= 12 and all(r["status"] == "ok" and r["output"] for r in ok)
    assert discards and all(r["status"] != "ok" and r["extra"]["raw"] and r["extra"]["detail"] for r in discards)
    assert all(r["method"] == "self_instruct" and r["settings"]["model"] == "embedded" for r in ok)
    assert "kept with outputs" in result.output and "rouge_duplicate" in result.output
    state = json.loads((tmp_path / "si.run.json").read_text())
    assert state["settings"]["options"]["sampling"]["n"] == 3

    # raise the target and resume: the run continues, nothing is written twice
    result = CliRunner().invoke(cli, args[:5] + ["30"] + args[6:] + ["--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ok2, discards2 = lines(out), lines(tmp_path / "si.discards.jsonl")
    ids = [r["id"] for r in ok2 + discards2]
    assert len(ids) == len(set(ids)) and len(ok2) >= 30
    assert ok2[:len(ok)] == ok

    # changed settings refuse to resume
    result = CliRunner().invoke(cli, args + ["--resume", "--temperature", "0.2"])
    assert result.exit_code != 0 and "settings changed" in result.output


def test_cli_bad_option_is_one_clear_message(tmp_path, fake_backend):
    from instructmill.cli import cli

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "Name a bird.", "input": "", "output": "Owl."}) + "\n")
    result = CliRunner().invoke(cli, ["self-instruct", str(seeds), "-o", str(tmp_path / "o.jsonl"),
                                      "--prompt-style", "weird"])
    assert result.exit_code != 0 and "prompt_style" in result.output and "Traceback" not in result.output
