"""The LLM judge against a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers.

The fake server (fake_openai_server.py) answers from the prompt it receives: pointwise prompts by
the output under judgment, pairwise prompts by the two responses in the order shown, so every
expected number below is computed by hand from the tables at the top of this file.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAI, Reply

from ketchup.cli import main
from ketchup.config import ConfigError, JudgeConfig, parse_section
from ketchup.evaluate.judge.cache import cache_key
from ketchup.evaluate.judge.parsing import parse_score, parse_winner
from ketchup.evaluate.judge.prompts import Template, load_templates
from ketchup.evaluate.judge.protocols import combine_orders, outcome_for_a
from ketchup.files import read_jsonl, write_jsonl
from ketchup.math.stats import mean_ci, rate_cis
from ketchup.stages.judge import run_judge

KEY_ENV = "KETCHUP_JUDGE_TEST_KEY"
SECRET = "sk-test-SECRET-0123456789abcdef"
IDS = ["e1", "e2", "e3", "e4", "e5"]
EXAMPLES = [
    {
        "id": i,
        "source": f"name[Place {i}] | food[Italian] | area[riverside]",
        "target": f"Place {i} serves Italian food by the riverside.",
        "references": [f"Place {i} serves Italian food by the riverside."],
        "meta": {},
    }
    for i in IDS
]

# Pointwise: the answer the judge gives to each output (system `good`: all well-formed).
GOOD = {"e1": 7, "e2": 3, "e3": 9, "e4": 5, "e5": 6}  # mean 6.0
GOOD_FORMATS = [
    '{{"score": {}, "reason": "fine"}}',
    "Score: {}\nReason: misses the area",
    '```json\n{{"score": {}, "reason": "all attributes"}}\n```',
    "{}/10",
    '{{"score": "{}"}}',
]
# System `messy`: two answers cannot be parsed.
MESSY = {
    "e1": '{"score": 8, "reason": "ok"}',
    "e2": "I would rather not rate this output.",
    "e3": '{"score": 11, "reason": "too good"}',
    "e4": "Score: 2",
    "e5": '{"score": 5}',
}  # scored: 8, 2, 5 -> mean 5.0; unparsed: e2 (no score), e3 (out of range)

# Pairwise x vs y, by example: the verdict (by position shown) for each order.
# e1: x better (both orders) -> win; e2: tie when x is first, x wins when second -> win;
# e3: the judge always says "A" (position bias) -> inconsistent -> tie; e4: y better -> loss;
# e5: tie both -> tie.  Rates: win 2/5, tie 2/5, loss 1/5.
PAIR_VERDICTS = {
    ("x-e1", "y-e1"): "A",
    ("y-e1", "x-e1"): "B",
    ("x-e2", "y-e2"): "tie",
    ("y-e2", "x-e2"): "B",
    ("x-e3", "y-e3"): "A",
    ("y-e3", "x-e3"): "A",
    ("x-e4", "y-e4"): "B",
    ("y-e4", "x-e4"): "A",
    ("x-e5", "y-e5"): "tie",
    ("y-e5", "x-e5"): "tie",
}
EXPECTED_PAIR = {"e1": "win", "e2": "win", "e3": "tie", "e4": "loss", "e5": "tie"}


def section(prompt: str, start: str, end: str) -> str:
    return prompt.split(start, 1)[1].split(end, 1)[0].strip()


def shown(prompt: str) -> tuple[str, str]:
    """The two responses of a pairwise prompt, in the order shown."""
    return (
        section(prompt, "Response A:\n", "\n\nResponse B:"),
        section(prompt, "Response B:\n", "\n\nWhich response"),
    )


def judge_answer(prompt: str, hit: int = 0) -> str:
    """The scripted judge: deterministic in the prompt."""
    if "Output to judge:" in prompt:
        output = section(prompt, "Output to judge:\n", "\n\nRate the output")
        system, id_ = output.split("-")
        if system == "good":
            n = IDS.index(id_)
            return GOOD_FORMATS[n].format(GOOD[id_])
        if system == "messy":
            return MESSY[id_]
        return '{"score": 4, "reason": "default"}'
    verdict = PAIR_VERDICTS.get(shown(prompt), "tie")
    return json.dumps({"winner": verdict, "reason": "scripted"})


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def servers():
    started: list[FakeOpenAI] = []

    def start(script=judge_answer) -> FakeOpenAI:
        server = FakeOpenAI(script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def make_cfg(server: FakeOpenAI | None = None, **overrides) -> JudgeConfig:
    data = {
        "enabled": True,
        "base_url": server.base_url if server else "http://127.0.0.1:9/v1",
        "model": "judge-test",
        "api_key_env": KEY_ENV,
        "protocols": ["pointwise"],
        "max_examples": 100,
        "concurrency": 4,
        "timeout_s": 5,
        "max_retries": 3,
        "max_total_s": 30,
        **overrides,
    }
    return parse_section(JudgeConfig, data, "judge", "judge")


def outputs_for(*systems: str) -> dict[str, dict[str, str]]:
    return {s: {i: f"{s}-{i}" for i in IDS} for s in systems}


def judge(cfg, tmp_path: Path, systems=("good",), pairs=(), out="out", cache="cache.db", **kw):
    return run_judge(
        cfg,
        examples=EXAMPLES,
        outputs=outputs_for(*systems),
        pairs=pairs,
        task_kind="data-to-text",
        cache_path=tmp_path / cache,
        out_dir=tmp_path / out,
        backoff_s=0.01,
        progress=False,
        log=lambda *a: None,
        **kw,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def by_system(path: Path) -> dict[str, dict[str, str]]:
    return {row["system"]: row for row in read_csv(path)}


def write_inputs(tmp_path: Path, systems=("x", "y")) -> list[str]:
    """The data file and one outputs file per system; returns the CLI's input arguments."""
    write_jsonl(tmp_path / "test.jsonl", EXAMPLES)
    args = ["--data", str(tmp_path / "test.jsonl")]
    for name, by_id in outputs_for(*systems).items():
        path = tmp_path / f"{name}.jsonl"
        write_jsonl(path, [{"id": i, "output": o} for i, o in by_id.items()])
        args += ["--system", f"{name}={path}"]
    return args


def cli(tmp_path: Path, cfg: dict, *extra: str, systems=("x", "y"), out="out") -> int:
    return main(
        [
            "judge",
            *write_inputs(tmp_path, systems),
            "--task-kind",
            "data-to-text",
            "--config-json",
            json.dumps(cfg),
            "--cache",
            str(tmp_path / "cache.db"),
            "--out-dir",
            str(tmp_path / out),
            *extra,
        ]
    )


def cfg_json(server: FakeOpenAI | None, **overrides) -> dict:
    return {
        "enabled": True,
        "base_url": server.base_url if server else "http://127.0.0.1:9/v1",
        "model": "judge-test",
        "api_key_env": KEY_ENV,
        "timeout_s": 5,
        "max_retries": 2,
        "max_total_s": 30,
        **overrides,
    }


def files_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Parsing, combination and statistics (no server)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 7, "reason": "ok"}', 7),
        ('Sure!\n```json\n{"score": 9, "reason": "x"}\n```', 9),
        ("Score: 3\nReason: misses the area", 3),
        ("**Rating:** 6/10", 6),
        ("8", 8),
        ('{"score": "4"}', 4),
        ("I cannot judge this.", None),
        ('{"score": 11}', None),
        ('{"score": 0}', None),
        ('{"score": "high"}', None),
        ("Score: 4, on reflection Score: 5", None),
        ("", None),
        # MT-Bench single-answer grading
        ("The output names every attribute.\n\nRating: [[7]]", 7),
        ("Rating: [[8.5]]", 8.5),
        ("Rating: [[7]] ... Rating: [[3]]", None),
        ("Rating: [[12]]", None),
        # Prometheus absolute grading
        ("Feedback: misses the area. [RESULT] 4", 4),
        ("Feedback: fine [RESULT] (6)", 6),
    ],
)
def test_parse_score(text, score):
    parsed = parse_score(text)
    assert parsed.ok == (score is not None)
    assert parsed.value == score
    if score is None:
        assert parsed.problem


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ('{"winner": "A", "reason": "r"}', "A"),
        ('{"winner": "Response B"}', "B"),
        ('{"winner": "tie"}', "tie"),
        ("Winner: B", "B"),
        ("[[A]]", "A"),
        ("tie", "tie"),
        ('{"winner": "C"}', None),
        ("Both are fine.", None),
        ("Winner: A. No, winner: B", None),
        # MT-Bench pairwise: [[C]] is a tie
        ('Assistant A is more faithful. Final verdict: "[[A]]"', "A"),
        ("Both miss the area. [[C]]", "tie"),
        ("[[B]]", "B"),
        ("First [[A]], then on reflection [[B]]", None),
        # Arena-Hard
        ("My final verdict is: [[A>>B]]", "A"),
        ("My final verdict is: [[B>A]]", "B"),
        ("My final verdict is tie: [[A=B]]", "tie"),
        # Prometheus relative grading
        ("Feedback: B keeps every slot. [RESULT] B", "B"),
    ],
)
def test_parse_winner(text, verdict):
    parsed = parse_winner(text)
    assert parsed.ok == (verdict is not None)
    assert parsed.value == verdict


def test_outcome_mapping_and_combination_rule():
    assert outcome_for_a("A", "AB") == "win" and outcome_for_a("B", "AB") == "loss"
    assert outcome_for_a("A", "BA") == "loss" and outcome_for_a("B", "BA") == "win"
    assert outcome_for_a("tie", "BA") == "tie"
    table = {
        ("win", "win"): "win",
        ("win", "tie"): "win",
        ("tie", "win"): "win",
        ("win", "loss"): "tie",  # inconsistent orders
        ("loss", "win"): "tie",
        ("tie", "tie"): "tie",
        ("loss", "tie"): "loss",
        ("tie", "loss"): "loss",
        ("loss", "loss"): "loss",
    }
    for (first, second), expected in table.items():
        assert combine_orders(first, second) == expected


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    values = [7, 3, 9, 5, 6]
    mean, lo, hi = mean_ci(values)
    assert mean == 6.0 and lo <= mean <= hi and (lo, hi) == mean_ci(values)[1:]
    assert mean_ci([4.0]) == (4.0, 4.0, 4.0)
    assert all(math.isnan(v) for v in mean_ci([]))
    rates = rate_cis(["win", "win", "tie", "loss", "tie"])
    assert [rates[k][0] for k in ("win", "tie", "loss")] == [0.4, 0.4, 0.2]
    assert rates == rate_cis(["win", "win", "tie", "loss", "tie"])
    for rate, low, high in rates.values():
        assert 0 <= low <= rate <= high <= 1


def test_cache_key_covers_judge_template_decoding_and_prompt():
    base = dict(
        model="m",
        base_url="http://h/v1",
        template_version="v1",
        decoding={"temperature": 0.0, "max_tokens": 10},
        messages=[{"role": "user", "content": "p"}],
    )
    key = cache_key(**base)
    assert cache_key(**base) == key
    for change in (
        {"model": "m2"},
        {"base_url": None},
        {"template_version": "v2"},
        {"decoding": {"temperature": 0.5, "max_tokens": 10}},
        {"messages": [{"role": "user", "content": "p2"}]},
    ):
        assert cache_key(**{**base, **change}) != key


def test_packaged_templates_are_versioned_and_carry_the_rubric():
    templates = load_templates()
    assert templates["pointwise"].version == "pointwise-v1"
    assert templates["pairwise"].version == "pairwise-v1"


# ----------------------------------------------------------------------------------------------
# Pointwise against the server


def test_pointwise_well_formed_ratings_give_the_hand_computed_means(tmp_path, servers, api_key):
    server = servers()
    result = judge(make_cfg(server), tmp_path, systems=("good", "messy"))
    assert result.complete and server.hits == 10
    summary = by_system(tmp_path / "out" / "pointwise_summary.csv")
    good = summary["good"]
    assert (good["n"], good["mean_score"], good["n_unparsed"]) == ("5", "6.0000", "0")
    assert float(good["ci_low"]) <= 6.0 <= float(good["ci_high"])
    rows = [r for r in read_jsonl(tmp_path / "out" / "judgments.jsonl") if r["system"] == "good"]
    assert {r["id"]: r["score"] for r in rows} == GOOD
    # every request used the config's decoding parameters and the model
    body = server.requests[0]["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-test", 0.0, 256)
    prompt = server.prompts()[0]
    assert "every attribute" in prompt and "name[Place" in prompt


def test_pointwise_malformed_answers_are_unparsed_kept_and_counted(tmp_path, servers, api_key):
    server = servers()
    result = judge(make_cfg(server), tmp_path, systems=("good", "messy"))
    assert result.n_unparsed == 2
    messy = by_system(tmp_path / "out" / "pointwise_summary.csv")["messy"]
    assert (messy["n"], messy["mean_score"], messy["n_unparsed"]) == ("3", "5.0000", "2")
    rows = {
        r["id"]: r
        for r in read_jsonl(tmp_path / "out" / "judgments.jsonl")
        if r["system"] == "messy"
    }
    for id_ in ("e2", "e3"):
        assert rows[id_]["status"] == "unparsed"
        assert rows[id_]["score"] is None
        assert rows[id_]["raw"] == MESSY[id_]
        assert rows[id_]["problem"]
    assert rows["e1"]["status"] == "ok" and rows["e1"]["reason"] == "ok"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "unparsed: 2" in report


def test_a_judge_answering_in_the_literature_formats_is_read(tmp_path, servers, api_key):
    """MT-Bench / Prometheus answers from the endpoint, not one of them in the prompt's JSON:
    every judgment is parsed."""

    def script(prompt, hit):
        if "Output to judge:" in prompt:
            return f"Faithful enough.\n\nRating: [[{3 + hit % 5}]]"
        return "Feedback: both keep the slots. [RESULT] A" if hit % 2 else "Final: [[C]]"

    cfg = make_cfg(servers(script), protocols=["pointwise", "pairwise"])
    result = judge(cfg, tmp_path, systems=("good", "bad"), pairs=[("good", "bad")])
    assert result.n_requests == 5 * 2 + 5 * 2 and result.n_unparsed == 0
    verdicts = {r.get("verdict") for r in read_jsonl(tmp_path / "out" / "judgments.jsonl")}
    assert verdicts == {None, "A", "tie"}  # None: the pointwise rows


def test_a_run_with_most_answers_unparsed_fails_with_a_warning(tmp_path, servers, api_key, capsys):
    """A judge that does not answer in any format the parser reads: the run still writes what it
    got, then ends with one warning line (the unparsed share and one raw answer) and exit 4, so
    that nobody publishes a table of empty judgments. A minority unparsed is not an error."""

    def script(prompt, hit):
        return "I would rate this output as fairly good overall." if hit else '{"score": 6}'

    rc = cli(tmp_path, cfg_json(servers(script), protocols=["pointwise"]), systems=("x", "y"))
    err = capsys.readouterr().err
    assert rc == 4
    (line,) = [x for x in err.splitlines() if x.startswith("ketchup judge: warning: ")]
    assert "9 of 10 answers (90%) could not be parsed" in line
    assert "'I would rate this output as fairly good overall.'" in line
    assert (tmp_path / "out" / "judgments.jsonl").is_file()

    mostly_fine = servers(lambda prompt, hit: '{"score": 6}' if hit else "No idea.")
    rc = cli(tmp_path, cfg_json(mostly_fine, protocols=["pointwise"]), out="fine")
    assert rc == 0 and "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Failures: retries, timeouts, the time ceiling, fatal errors


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_error_then_success_is_retried(tmp_path, servers, api_key, status):
    def script(prompt, hit):
        return Reply(status=status) if hit == 0 else judge_answer(prompt)

    server = servers(script)
    cfg = make_cfg(server, concurrency=1, max_examples=1)
    result = judge(cfg, tmp_path)
    assert result.complete and server.hits == 2
    assert read_jsonl(tmp_path / "out" / "judgments.jsonl")[0]["score"] == 7


def test_slow_reply_past_timeout_is_retried_then_answered(tmp_path, servers, api_key):
    def script(prompt, hit):
        return Reply(judge_answer(prompt), delay_s=3 if hit == 0 else 0)

    server = servers(script)
    cfg = make_cfg(server, concurrency=1, max_examples=1, timeout_s=0.5)
    result = judge(cfg, tmp_path)
    assert result.complete and server.hits == 2


def test_always_slow_reply_is_recorded_not_judged(tmp_path, servers, api_key):
    server = servers(lambda prompt, hit: Reply(judge_answer(prompt), delay_s=1.5))
    cfg = make_cfg(server, concurrency=1, max_examples=1, timeout_s=0.2, max_retries=1)
    result = judge(cfg, tmp_path)
    assert not result.complete and result.n_not_judged == 1 and server.hits == 2
    (row,) = read_jsonl(tmp_path / "out" / "judgments.jsonl")
    assert row["status"] == "not_judged" and row["score"] is None
    assert "retries exhausted" in row["error"] and "Timeout" in row["error"]
    summary = by_system(tmp_path / "out" / "pointwise_summary.csv")["good"]
    assert (summary["n"], summary["n_not_judged"]) == ("0", "1")


def test_time_ceiling_stops_the_run_with_a_message(tmp_path, servers, api_key, capsys):
    # the first request is answered at once; the next one hangs past the ceiling
    def script(prompt, hit):
        return judge_answer(prompt) if hit == 0 else Reply(judge_answer(prompt), delay_s=5)

    server = servers(script)
    cfg = cfg_json(server, protocols=["pointwise"], concurrency=1, max_total_s=1.0, timeout_s=4)
    rc = cli(tmp_path, cfg, systems=("good",))
    err = capsys.readouterr().err
    assert rc == 3
    assert "4 of 5 judgments were left not judged" in err
    assert "time ceiling reached" in err and "resumes from the cache" in err
    assert server.hits == 2  # nothing is sent past the ceiling
    rows = read_jsonl(tmp_path / "out" / "judgments.jsonl")
    assert [r["status"] for r in rows] == ["ok"] + ["not_judged"] * 4
    assert by_system(tmp_path / "out" / "pointwise_summary.csv")["good"]["n_not_judged"] == "4"


def test_authentication_error_stops_the_run(tmp_path, servers, api_key, capsys):
    server = servers(lambda prompt, hit: Reply(status=401))
    rc = cli(tmp_path, cfg_json(server, protocols=["pointwise"], concurrency=1), systems=("x",))
    assert rc == 3
    assert server.hits == 1  # a bad key is not retried nor repeated for every request
    assert "fatal endpoint error" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The cache


def test_rerun_sends_nothing_and_gives_identical_outputs(tmp_path, servers, api_key):
    server = servers()
    cfg = make_cfg(server, protocols=["pointwise", "pairwise"])
    first = judge(cfg, tmp_path, systems=("x", "y"), pairs=[("x", "y")], out="out1")
    assert first.complete and server.hits == 10 + 10
    second = judge(cfg, tmp_path, systems=("x", "y"), pairs=[("x", "y")], out="out2")
    assert second.complete and second.n_sent == 0 and server.hits == 20
    assert files_bytes(tmp_path / "out1") == files_bytes(tmp_path / "out2")


def test_changed_template_version_or_prompt_re_asks_only_what_changed(tmp_path, servers, api_key):
    server = servers()
    cfg = make_cfg(server, protocols=["pointwise", "pairwise"])
    judge(cfg, tmp_path, systems=("x", "y"), pairs=[("x", "y")])
    assert server.hits == 20
    templates = load_templates()
    old = templates["pointwise"]
    templates["pointwise"] = Template(old.protocol, "pointwise-v2-test", old.text)
    judge(cfg, tmp_path, systems=("x", "y"), pairs=[("x", "y")], templates=templates)
    assert server.hits == 20 + 10  # every pointwise request again, no pairwise one
    outputs = outputs_for("x", "y")
    outputs["x"]["e3"] = "x-e3 revised"
    run_judge(
        cfg,
        examples=EXAMPLES,
        outputs=outputs,
        task_kind="data-to-text",
        cache_path=tmp_path / "cache.db",
        out_dir=tmp_path / "out3",
        templates=templates,
        progress=False,
        log=lambda *a: None,
    )
    assert server.hits == 30 + 1  # only x's changed output


def test_interrupted_run_resumes_with_only_the_missing_requests(tmp_path, servers, api_key):
    answered = 3

    def failing(prompt, hit):  # the endpoint dies after three answers
        return judge_answer(prompt) if hit < answered else Reply(status=500)

    broken = servers(failing)
    cfg = make_cfg(broken, max_retries=1000, max_total_s=1.0)
    result = judge(cfg, tmp_path, systems=("good", "messy"))
    assert not result.complete and result.n_not_judged == 10 - answered
    assert result.not_judged_reasons == {"time ceiling reached": 10 - answered}
    ok = [
        r for r in read_jsonl(tmp_path / "out" / "judgments.jsonl") if r["status"] != "not_judged"
    ]
    assert len(ok) == answered
    hits_before = broken.hits

    # the endpoint recovers (same URL: the base_url is part of the cache key)
    broken.script = judge_answer
    resumed = judge(cfg, tmp_path, systems=("good", "messy"))
    assert resumed.complete and resumed.n_cached == answered
    assert broken.hits - hits_before == 10 - answered
    # the resumed results equal those of one uninterrupted run
    hits_before = broken.hits
    judge(cfg, tmp_path, systems=("good", "messy"), out="fresh", cache="fresh.db")
    assert broken.hits - hits_before == 10
    for name in ("judgments.jsonl", "pointwise_summary.csv", "report.md"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


# ----------------------------------------------------------------------------------------------
# Pairwise


def test_pairwise_sends_both_orders_and_combines_them(tmp_path, servers, api_key):
    server = servers()
    cfg = make_cfg(server, protocols=["pairwise"])
    result = judge(cfg, tmp_path, systems=("x", "y"), pairs=[("x", "y")])
    assert result.complete and server.hits == 10
    seen = {shown(p) for p in server.prompts()}
    for i in IDS:  # both orders, each with the right response in each position
        assert (f"x-{i}", f"y-{i}") in seen and (f"y-{i}", f"x-{i}") in seen

    rows = read_jsonl(tmp_path / "out" / "judgments.jsonl")
    for row in rows:
        first = "x" if row["order"] == "AB" else "y"
        assert row["system_a"] == "x" and row["system_b"] == "y"
        verdict = PAIR_VERDICTS[
            (f"{first}-{row['id']}", f"{'y' if first == 'x' else 'x'}-{row['id']}")
        ]
        assert row["verdict"] == verdict
    examples = {e["id"]: e for e in read_jsonl(tmp_path / "out" / "pairwise_examples.jsonl")}
    assert {i: e["outcome"] for i, e in examples.items()} == EXPECTED_PAIR
    assert (examples["e3"]["outcome_ab"], examples["e3"]["outcome_ba"]) == ("win", "loss")

    (summary,) = read_csv(tmp_path / "out" / "pairwise_summary.csv")
    assert (summary["system_a"], summary["system_b"], summary["n"]) == ("x", "y", "5")
    rates = [summary[f"{k}_rate"] for k in ("win", "tie", "loss")]
    assert rates == ["0.4000", "0.4000", "0.2000"]
    for k in ("win", "tie", "loss"):
        assert float(summary[f"{k}_ci_low"]) <= float(summary[f"{k}_rate"])
        assert float(summary[f"{k}_rate"]) <= float(summary[f"{k}_ci_high"])
    assert summary["n_unparsed"] == "0"
    assert "inconsistent orders = tie" in (tmp_path / "out" / "report.md").read_text()


def test_pairwise_unparsed_order_leaves_the_example_without_outcome(tmp_path, servers, api_key):
    def script(prompt, hit):
        if shown(prompt) == ("y-e1", "x-e1"):
            return "They are both quite nice."
        return judge_answer(prompt)

    server = servers(script)
    cfg = make_cfg(server, protocols=["pairwise"])
    judge(cfg, tmp_path, systems=("x", "y"), pairs=[("x", "y")])
    (summary,) = read_csv(tmp_path / "out" / "pairwise_summary.csv")
    assert (summary["n"], summary["n_unparsed"]) == ("4", "1")
    # e2..e5: win, tie, loss, tie
    assert [summary[f"{k}_rate"] for k in ("win", "tie", "loss")] == ["0.2500", "0.5000", "0.2500"]


# ----------------------------------------------------------------------------------------------
# The CLI: dry run, max_examples, the key


def test_dry_run_calls_nothing_and_writes_prompts_with_token_estimate(
    tmp_path, servers, monkeypatch, capsys
):
    import openai

    def no_client(*args, **kwargs):
        raise AssertionError("a dry run must not create a client")

    monkeypatch.setattr(openai, "OpenAI", no_client)
    monkeypatch.delenv(KEY_ENV, raising=False)  # and it needs no key
    server = servers()
    cfg = cfg_json(server, dry_run=True, max_examples=3)
    rc = cli(tmp_path, cfg, "--pair", "x:y")
    assert rc == 0 and server.hits == 0
    assert not (tmp_path / "cache.db").exists()
    rows = read_jsonl(tmp_path / "out" / "prompts.jsonl")
    assert len(rows) == 2 * 3 + 3 * 2  # pointwise x, y; pairwise x:y in two orders
    assert [r["id"] for r in rows if r["protocol"] == "pointwise"] == ["e1", "e2", "e3"] * 2
    for row in rows:
        (message,) = row["request"]["messages"]
        assert row["prompt_tokens_estimate"] == math.ceil(len(message["content"]) / 4)
        assert row["request"]["model"] == "judge-test"
    totals = json.loads((tmp_path / "out" / "dry_run.json").read_text())
    assert totals["n_to_send"] == 12 and totals["token_estimate"] == "ceil(characters / 4)"
    assert totals["prompt_tokens_estimate"] == sum(r["prompt_tokens_estimate"] for r in rows)
    assert "prompt tokens" in capsys.readouterr().out


def test_max_examples_takes_the_first_ids_for_every_system(tmp_path, servers, api_key):
    server = servers()
    cfg = cfg_json(server, max_examples=2, protocols=["pointwise", "pairwise"])
    assert cli(tmp_path, cfg, "--pair", "x:y") == 0
    rows = read_jsonl(tmp_path / "out" / "judgments.jsonl")
    point = [(r["system"], r["id"]) for r in rows if r["protocol"] == "pointwise"]
    pair = [(r["id"], r["order"]) for r in rows if r["protocol"] == "pairwise"]
    assert point == [("x", "e1"), ("x", "e2"), ("y", "e1"), ("y", "e2")]
    assert pair == [("e1", "AB"), ("e1", "BA"), ("e2", "AB"), ("e2", "BA")]
    assert server.hits == 8


def test_api_key_is_sent_but_never_written(tmp_path, servers, api_key, capsys):
    def script(prompt, hit):  # one failure, so an error message is written too
        return Reply(status=500) if hit == 0 else judge_answer(prompt)

    server = servers(script)
    cfg = cfg_json(server, protocols=["pointwise", "pairwise"])
    assert cli(tmp_path, cfg, "--pair", "x:y") == 0
    assert {r["authorization"] for r in server.requests} == {f"Bearer {SECRET}"}
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("cache.db") for p in written)
    assert (tmp_path / "out" / "judge.config.json").is_file()
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    config = json.loads((tmp_path / "out" / "judge.config.json").read_text())
    assert config["config"]["api_key_env"] == KEY_ENV
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


def test_missing_key_variable_is_a_clear_error_naming_it(tmp_path, servers, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server = servers()
    rc = cli(tmp_path, cfg_json(server), "--pair", "x:y")
    err = capsys.readouterr().err
    assert rc == 1 and server.hits == 0
    assert KEY_ENV in err and "not set" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=KEY_ENV):
        judge(make_cfg(server), tmp_path)


def test_bad_cli_inputs_are_one_line_errors(tmp_path, servers, api_key, capsys):
    server = servers()
    assert cli(tmp_path, cfg_json(server), "--pair", "x:z") == 1
    assert "no system 'z'" in capsys.readouterr().err
    write_jsonl(tmp_path / "short.jsonl", [{"id": "e1", "output": "x-e1"}])
    rc = main(
        [
            "judge",
            "--data",
            str(tmp_path / "test.jsonl"),
            "--system",
            f"short={tmp_path / 'short.jsonl'}",
            "--config-json",
            json.dumps(cfg_json(server)),
            "--cache",
            str(tmp_path / "c.db"),
            "--out-dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1 and re.search(r"no output for 4 of the 5", capsys.readouterr().err)
    assert server.hits == 0
