"""Offline classification step: shipped model, routing quality, priority rules, summaries, training and evaluation."""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import yaml

from core.classify.base import Classification
from core.classify.offline import OfflineClassifier, explain_priority, priority_for, summarize
from core.classify.train import (
    SHIPPED_MODEL_PATH,
    BlendedTextModel,
    EvalReport,
    LabeledText,
    evaluate,
    fit_model,
    fit_shipped_model,
    knowledge_digest,
    knowledge_examples,
    load_knowledge,
    load_mapping,
    read_model,
    save_model,
    ticket_text,
    train_from_csv,
)
from core.errors import ClassifierUnavailable, InvalidInput
from core.ticket import Priority

DEFAULTS = ["IT Support", "HR", "Facilities", "Finance", "General"]
HELDOUT = Path(__file__).parent / "data" / "heldout_requests.yaml"


@pytest.fixture(scope="module")
def shipped() -> OfflineClassifier:
    return OfflineClassifier.load(None, DEFAULTS)


@pytest.fixture(scope="module")
def heldout() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = yaml.safe_load(HELDOUT.read_text(encoding="utf-8"))
    return items


# --- the shipped model ---------------------------------------------------------------------------------------------


def test_shipped_model_loads_and_is_small(shipped: OfflineClassifier) -> None:
    assert shipped.model is not None
    assert set(shipped.model.labels) == set(DEFAULTS)
    assert shipped.model.version.startswith("shipped-")
    assert SHIPPED_MODEL_PATH.stat().st_size < 2 * 1024 * 1024


def test_shipped_model_matches_the_knowledge() -> None:
    knowledge = load_knowledge()
    model = read_model(SHIPPED_MODEL_PATH)
    assert model.knowledge_digest == knowledge_digest(knowledge), "run: python -m core.classify.train --shipped"
    rebuilt = fit_shipped_model(knowledge)
    assert rebuilt.version == model.version
    texts = [text for text, _ in knowledge_examples(knowledge)]
    assert rebuilt.estimator.predict(texts) == model.estimator.predict(texts)
    assert np.allclose(rebuilt.estimator.predict_proba(texts[:50]), model.estimator.predict_proba(texts[:50]))


def test_single_text_path_matches_the_batch_path(shipped: OfflineClassifier, heldout: list[dict[str, Any]]) -> None:
    assert shipped.model is not None
    texts = [ticket_text(h["subject"], h["body"]) for h in heldout]
    estimator = shipped.model.estimator
    assert np.allclose(estimator.predict_proba(texts), estimator.predict_proba_batch(texts))


@pytest.mark.parametrize(
    ("subject", "body", "department"),
    [
        ("", "my laptop won't connect to the VPN since this morning", "IT Support"),
        ("Password", "I forgot my password and I'm locked out", "IT Support"),
        ("", "how many days of annual leave do I have left", "HR"),
        ("Payslip", "there's a mistake on my payslip this month", "HR"),
        ("", "the heating on floor 3 is broken", "Facilities"),
        ("Access card", "my access card doesn't open the front door", "Facilities"),
        ("", "I need to get my train tickets reimbursed", "Finance"),
        ("Invoice", "the supplier says invoice 123 is still unpaid", "Finance"),
        ("", "where do I find the company holiday calendar", "General"),
        ("Summer party", "when is the summer party this year?", "General"),
    ],
)
def test_routes_obvious_requests(shipped: OfflineClassifier, subject: str, body: str, department: str) -> None:
    result = shipped.classify(subject, body)
    assert result.department == department
    assert result.confidence > 0.5


def test_heldout_accuracy_is_at_least_90_percent(shipped: OfflineClassifier, heldout: list[dict[str, Any]]) -> None:
    rows = [LabeledText(h["subject"], h["body"], h["department"]) for h in heldout]
    report = evaluate(shipped, rows)
    assert report.rows >= 150
    assert report.accuracy >= 0.9, report.format()
    fresh = evaluate(shipped, [r for r, h in zip(rows, heldout, strict=True) if h.get("batch") == 2])
    assert fresh.accuracy >= 0.9, fresh.format()


def test_classification_fields(shipped: OfflineClassifier) -> None:
    result = shipped.classify("Printer jam", "The printer on 2 is jammed again.\nThanks,\nBob")
    assert result.classifier == "offline" == shipped.name
    assert shipped.model is not None and result.model == shipped.model.version
    assert result.latency_ms is not None and 0 < result.latency_ms < 1000
    assert isinstance(result.priority, Priority)


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("", ""),
        ("   ", "\n\n\t"),
        ("Re: Fwd: [EXT]", "Hi,\n\nThanks\nBob"),
        ("x" * 500, "y" * 20000),
        ("Ünïcödé ✓", "Привет, у меня не работает принтер\r\nспасибо"),
        ("", "word " * 3000),
        ("Subject\nwith\nnewlines", "Body\u2028with\u2029odd\x0bline\x0cbreaks"),
    ],
)
def test_any_input_gives_sane_output(shipped: OfflineClassifier, subject: str, body: str) -> None:
    result = shipped.classify(subject, body)
    assert result.department in DEFAULTS
    assert 0.0 <= result.confidence <= 1.0
    assert result.summary and len(result.summary) <= 120
    assert result.summary == " ".join(result.summary.split())  # one line, no stray whitespace


def test_empty_ticket_has_zero_confidence(shipped: OfflineClassifier) -> None:
    assert shipped.classify("", "").confidence == 0.0


# --- priority ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "priority"),
    [
        ("the CRM is down for everyone in sales", Priority.URGENT),
        ("Email is down, nobody can send anything", Priority.URGENT),
        ("I think we have a security breach, files encrypted", Priority.URGENT),
        ("I can't work, my laptop won't boot and I have a client demo", Priority.URGENT),
        ("please reset my password ASAP", Priority.URGENT),
        ("URGENT: payroll file needed", Priority.URGENT),
        ("there is a strong smell of gas in the kitchen", Priority.URGENT),
        ("my laptop was stolen from the car", Priority.URGENT),
        ("the printer is not working", Priority.HIGH),
        ("I can’t log in to Outlook", Priority.HIGH),  # curly apostrophe, as phones type it
        ("the sink in the kitchen is leaking", Priority.HIGH),
        ("my salary was underpaid this month", Priority.HIGH),
        ("can I get a second monitor", Priority.LOW),
        ("how many days of annual leave do I have left", Priority.LOW),
        ("where do I find the holiday calendar?", Priority.LOW),
        ("no rush, but could someone look at the wobbly desk", Priority.LOW),
        ("not urgent: the printer is broken on 3", Priority.LOW),
        ("whenever you have time, the blinds in room 2 are stuck", Priority.LOW),
        ("suggestion for the kitchen: oat milk please", Priority.LOW),
        ("please order new business cards for me", Priority.MEDIUM),
        ("I need access to the finance folder", Priority.MEDIUM),
    ],
)
def test_priority_rules(text: str, priority: Priority) -> None:
    assert priority_for("", text) == priority


def test_priority_says_why() -> None:
    assert explain_priority("Outage", "") == (Priority.URGENT, "outage")
    assert explain_priority("", "please order a new chair") == (Priority.MEDIUM, "default")
    assert explain_priority("", "is there a parking space for visitors?") == (Priority.LOW, "question")


def test_priority_ignores_alarm_words_deep_in_quoted_history() -> None:
    body = "please add Ana to the newsletter list\n" + "old thread text " * 200 + "\n> URGENT outage"
    assert priority_for("Newsletter", body) == Priority.MEDIUM


# --- summary -------------------------------------------------------------------------------------------------------


def test_summary_uses_a_meaningful_subject() -> None:
    assert summarize("RE: FW: Heating broken on floor 3", "Hi,\nit is cold.") == "Heating broken on floor 3"


def test_summary_falls_back_to_the_first_informative_sentence() -> None:
    body = "Hi team,\n\nHope you're well. My laptop won't connect to the VPN since this morning. I tried a reboot.\n\n"
    body += "Thanks,\nAna\n> quoted old message"
    assert summarize("Help", body) == "My laptop won't connect to the VPN since this morning."
    assert summarize("", "hello, the lift is stuck on 2") == "the lift is stuck on 2"


def test_summary_is_trimmed_to_one_short_line() -> None:
    summary = summarize("", "The " + "very " * 60 + "long request\nwith a second line")
    assert len(summary) <= 120 and summary.endswith("…") and "\n" not in summary
    assert summarize("", "") == "(no text)"
    assert summarize("Question", "") == "Question"


# --- departments other than the shipped ones -----------------------------------------------------------------------


def test_department_names_match_case_insensitively_and_by_alias() -> None:
    classifier = OfflineClassifier.load(None, ["it", "People", "office", "accounts", "other"])
    assert classifier.model is not None and classifier.model.version.startswith("shipped-")  # no refit needed
    assert classifier.classify("", "my laptop screen is cracked").department == "it"
    assert classifier.classify("", "I want to book annual leave").department == "People"
    assert classifier.classify("", "the radiator is cold").department == "office"
    assert classifier.classify("", "expense claim for a taxi").department == "accounts"


def test_custom_departments_are_learnt_from_their_config() -> None:
    departments = ["IT Support", "HR", "Legal", "Sales"]
    classifier = OfflineClassifier.load(
        None,
        departments,
        descriptions={"Legal": "Contracts, NDAs, legal advice", "Sales": "Leads, quotes for customers, CRM deals"},
        keywords={"Legal": ["nda", "contract review", "lawyer", "gdpr"], "Sales": ["lead", "prospect", "deal"]},
    )
    assert classifier.model is not None and classifier.model.version.startswith("config-")
    assert classifier.classify("NDA", "can legal review this NDA before I sign it").department == "Legal"
    assert classifier.classify("", "a new prospect wants to talk about a deal").department == "Sales"
    assert classifier.classify("", "my vpn keeps dropping").department == "IT Support"
    assert classifier.classify("", "how much paternity leave do I get").department == "HR"
    # Facilities is not configured: a heating ticket goes to some configured department, with little confidence.
    result = classifier.classify("", "the heating on floor 3 is broken")
    assert result.department in departments


def test_entirely_unknown_departments_still_work() -> None:
    classifier = OfflineClassifier.load(
        None, ["Kitchen", "Garage"], keywords={"Kitchen": ["oven", "fridge"], "Garage": ["car", "tyre"]}
    )
    assert classifier.classify("", "the oven is not heating").department == "Kitchen"
    assert classifier.classify("", "flat tyre on the van").department == "Garage"


def test_single_department_gets_everything() -> None:
    classifier = OfflineClassifier.load(None, ["Support"])
    result = classifier.classify("", "anything at all")
    assert (result.department, result.confidence) == ("Support", 1.0)


def test_unconfigured_model_labels_are_never_returned(tmp_path: Path) -> None:
    examples = [(f"alpha request {i}", "Alpha") for i in range(6)] + [(f"beta thing {i}", "Beta") for i in range(6)]
    examples += [(f"gamma item {i}", "Gamma") for i in range(6)]
    path = tmp_path / "model.joblib"
    save_model(fit_model(examples, source="test"), path)
    classifier = OfflineClassifier.load(path, ["alpha", "BETA"])
    result = classifier.classify("", "gamma item")
    assert result.department in ("alpha", "BETA")
    assert result.confidence < 0.5  # the mass on Gamma is doubt, not moved to the winner
    assert classifier.classify("", "alpha request").department == "alpha"


def test_trained_model_without_any_configured_department_falls_back_to_knowledge(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    save_model(fit_model([("apple pie", "X"), ("dog food", "Y")], source="test"), path)
    classifier = OfflineClassifier.load(path, DEFAULTS)
    assert classifier.model is not None and classifier.model.version.startswith("shipped-")


def test_missing_model_path_means_the_shipped_model(tmp_path: Path) -> None:
    classifier = OfflineClassifier.load(tmp_path / "nothing-here.joblib", DEFAULTS)
    assert classifier.model is not None and classifier.model.version.startswith("shipped-")


# --- model files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all", b"\x80\x04\x95garbage", json.dumps({"format": "x"}).encode(), b"\x78\x9c\x00\x01"],
)
def test_corrupt_model_file_raises_classifier_unavailable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "offline.joblib"
    path.write_bytes(content)
    with pytest.raises(ClassifierUnavailable, match=str(path.name)):
        OfflineClassifier.load(path, DEFAULTS)


def test_truncated_and_foreign_model_files_raise(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.joblib"
    truncated.write_bytes(SHIPPED_MODEL_PATH.read_bytes()[:5000])
    with pytest.raises(ClassifierUnavailable):
        read_model(truncated)
    foreign = tmp_path / "foreign.joblib"
    joblib.dump({"some": "dict"}, foreign)
    with pytest.raises(ClassifierUnavailable, match="not a ticketbot offline model"):
        read_model(foreign)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = fit_model(
        [(f"printer {i}", "IT") for i in range(5)] + [(f"invoice {i}", "Money") for i in range(5)], source="test"
    )
    path = tmp_path / "sub" / "offline.joblib"
    save_model(model, path)
    save_model(model, path)  # replacing an existing file works too
    assert [p.name for p in path.parent.iterdir()] == ["offline.joblib"]  # no temp file left behind
    loaded = read_model(path)
    assert (loaded.version, loaded.labels, loaded.source, loaded.examples) == (
        model.version,
        model.labels,
        model.source,
        model.examples,
    )
    assert loaded.trained_at == model.trained_at
    assert np.allclose(loaded.probabilities("printer jam"), model.probabilities("printer jam"))


@pytest.mark.parametrize("raw_tf", [False, True])
def test_a_model_saved_before_folding_loads_and_scores_the_same(monkeypatch: pytest.MonkeyPatch, raw_tf: bool) -> None:
    """Model files from before the members were folded (members plus blend, no ``weights_``) still load."""
    texts = [f"printer {i} jams" for i in range(30)] + [f"invoice {i} unpaid" for i in range(30)]
    labels = ["IT"] * 30 + ["Money"] * 30
    folded = BlendedTextModel(word_c=0.5, nb_c=0.3, char_c=None, idf=False, min_df=1, raw_tf=raw_tf).fit(texts, labels)
    # The same fit with folding skipped is what older code pickled: members and blend, no weights.
    monkeypatch.setattr(BlendedTextModel, "_fold", lambda self: None)
    old = BlendedTextModel(word_c=0.5, nb_c=0.3, char_c=None, idf=False, min_df=1, raw_tf=raw_tf).fit(texts, labels)
    monkeypatch.undo()
    state = dict(old.__dict__)
    del state["weights_"], state["intercept_"]
    if not raw_tf:
        del state["raw_tf"]  # older code had no such attribute
    old.__dict__ = state
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.weights_ and not loaded.members_
    for text in ("printer 3 jams again", "unpaid invoice", "something else"):
        assert np.allclose(loaded.proba_one(text), folded.proba_one(text))


def test_raw_chars_members_score_the_same_on_both_routes_and_older_models_still_load() -> None:
    """The large-data character members (``raw_chars``) are folded like the others; models without them still load."""
    texts = [f"printer {i} jams" for i in range(30)] + [f"invoice {i} unpaid" for i in range(30)]
    labels = ["IT"] * 30 + ["Money"] * 30
    model = BlendedTextModel(min_df=1, raw_tf=True, raw_chars=True).fit(texts, labels)
    assert set(model.weights_) == {"words", "raw_words", "raw_chars"}
    assert model.params()["raw_chars"] is True
    probe = ["printer 3 jams again", "unpaid invoce", "pritner", "something else", "", "Prïnter  3\tjams\n\nAGAIN a"]
    assert np.allclose(model.predict_proba(probe), model.predict_proba_batch(probe))
    assert np.allclose(model.predict_proba(probe), model.predict_proba_batch(probe))  # again, from the word cache
    assert model.predict(["pritner jamming"]) == ["IT"]  # a typo the word features do not know
    assert "_word_grams" not in model.__getstate__()  # the per-word cache is not saved with the model
    loaded = pickle.loads(pickle.dumps(model))
    assert np.allclose(loaded.predict_proba(probe), model.predict_proba(probe))
    older = BlendedTextModel(min_df=1, raw_tf=True).fit(texts, labels)
    assert "raw_chars" not in older.params()  # so older models keep their version
    state = dict(older.__dict__)
    del state["raw_chars"], state["raw_chars_"]  # older code had no such attributes
    older.__dict__ = state
    reloaded = pickle.loads(pickle.dumps(older))
    assert np.allclose(reloaded.predict_proba(probe), reloaded.predict_proba_batch(probe))


# --- training from a CSV -------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = ("subject", "text", "queue")) -> Path:
    import csv

    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


HISTORY = [
    ("VPN", "vpn drops every hour", "Tech"),
    ("Laptop", "laptop screen flickers", "Tech"),
    ("Login", "cannot log in to the portal", "Tech"),
    ("Printer", "printer jammed on floor 2", "Tech"),
    ("Leave", "how much holiday do I have", "People"),
    ("Payslip", "payslip is missing", "People"),
    ("Sick", "off sick today", "People"),
    ("Contract", "copy of my contract please", "People"),
    ("Refund", "customer wants a refund", "Returns"),
    ("Return", "return label for the parcel", "Returns"),
    ("", "", "Tech"),  # empty: skipped
]


def test_train_from_csv_with_plain_mapping(tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "history.csv", HISTORY)
    mapping = {"Tech": "IT Support", "People": "HR", "Returns": "Finance"}
    report = train_from_csv(csv_path, "text", "queue", subject_col="subject", mapping=mapping, include_shipped=False)
    assert report.csv.rows == 11 and report.csv.skipped_empty == 1
    assert report.csv_examples == 10 and report.shipped_examples == 0
    assert report.label_counts == {"Finance": 2, "HR": 4, "IT Support": 4}
    assert report.model.labels == ("Finance", "HR", "IT Support")
    assert report.model.estimator.predict(["the vpn drops all the time"]) == ["IT Support"]
    assert report.warnings == ()


def test_train_from_csv_with_suggested_mapping_shape_and_shipped_knowledge(tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "history.csv", HISTORY + [("Hello", "sales question", "Sales")])
    map_path = tmp_path / "map.json"
    map_path.write_text(
        json.dumps(
            {
                "_note": "comment",
                "Tech": {"department": "IT Support", "fit": "good"},
                "People": {"department": "hr", "fit": "good"},
                "Returns": {"department": None, "fit": "none", "fallback": "Finance"},
                "Sales": {"department": None, "fit": "none"},
            }
        )
    )
    mapping = load_mapping(map_path)
    assert mapping == {"Tech": "IT Support", "People": "hr", "Returns": "Finance", "Sales": None}
    extra = [("the oven is broken", "Facilities")]
    report = train_from_csv(
        csv_path,
        "text",
        "queue",
        subject_col="subject",
        mapping=mapping,
        include_shipped=True,
        departments=DEFAULTS,
        extra_examples=extra,
    )
    assert report.csv.dropped_unmapped == 1
    assert report.shipped_examples > 500 and report.extra_examples == 1
    assert set(report.model.labels) == set(DEFAULTS)  # "hr" respelled as configured
    classifier = OfflineClassifier(model=report.model, departments=DEFAULTS)
    assert classifier.classify("", "customer wants a refund for the parcel").department == "Finance"


def test_unmapped_labels_are_kept_and_reported(tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "history.csv", HISTORY)
    report = train_from_csv(csv_path, "text", "queue", mapping={"Tech": "IT Support"}, include_shipped=False)
    assert set(report.model.labels) == {"IT Support", "People", "Returns"}
    assert any("not in the mapping" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (None, {}, "cannot open"),
        ("", {}, "empty"),
        ("text,queue\n", {}, "no rows"),
        ("body,queue\nhello,Tech\n", {}, "no text column 'text'"),
        ("text,label\nhello,Tech\n", {}, "no label column 'queue'"),
        ("text,queue\nhello,Tech\n", {"subject_col": "title"}, "no subject column 'title'"),
        ("text,queue\n,Tech\nhello,\n", {}, "none of the 2 rows"),
        ("text,queue\nhello,Tech\nbye,Tech\n", {}, "at least two different labels"),
        ("text,queue\na b,Tech\nc d,People\n", {}, "cannot train.*empty vocabulary"),
        ('text,queue\n"unterminated,Tech\n', {}, "malformed CSV"),
    ],
)
def test_bad_csv_input_raises_invalid_input(
    tmp_path: Path, content: str | None, kwargs: dict[str, Any], message: str
) -> None:
    path = tmp_path / "history.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInput, match=message):
        train_from_csv(path, "text", "queue", include_shipped=False, **kwargs)


def test_csv_that_is_not_utf8_raises_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_bytes("text,queue\ncaf\u00e9 machine broken,Facilities\n".encode("utf-16"))
    with pytest.raises(InvalidInput, match="UTF-8"):
        train_from_csv(path, "text", "queue", include_shipped=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"a": 3}', "expected a department name"),
        ('{"a": {"department": 5}}', "must be a string"),
        ('{"_note": "x"}', "no labels"),
    ],
)
def test_bad_mapping_file_raises_invalid_input(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "map.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInput, match=message):
        load_mapping(path)


def test_bad_knowledge_file_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("name: X\nexamples:\n  - fine\n  - idea: unquoted colon\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"x\.yaml: examples\[1\].*quote"):
        load_knowledge(tmp_path)


# --- evaluation ----------------------------------------------------------------------------------------------------


class _KeywordFake:
    """A classifier that answers by one keyword, so the expected report is easy to compute by hand."""

    name = "fake"

    def classify(self, subject: str, body: str) -> Classification:
        if "down" in body:
            raise ClassifierUnavailable("fake outage")
        department = "it" if "laptop" in body else "HR"
        return Classification(department, Priority.MEDIUM, 0.9, body, classifier=self.name)


def test_evaluate_computes_accuracy_f1_confusion_and_latency() -> None:
    rows = [
        LabeledText("", "laptop broken", "IT"),
        LabeledText("", "laptop slow", "IT"),
        LabeledText("", "printer jam", "IT"),
        LabeledText("", "holiday", "HR"),
        LabeledText("", "service down", "HR"),
    ]
    report = evaluate(_KeywordFake(), rows)
    assert isinstance(report, EvalReport)
    assert report.rows == 5 and report.unavailable == 1
    assert report.accuracy == pytest.approx(3 / 5)  # "it" matches "IT" case-insensitively
    assert report.labels == ("HR", "IT")
    assert report.confusion == ((1, 0), (1, 2))
    assert report.per_label["IT"].precision == 1.0 and report.per_label["IT"].recall == pytest.approx(2 / 3)
    assert report.per_label["HR"].precision == 0.5 and report.per_label["HR"].recall == 0.5
    assert report.macro_f1 == pytest.approx((0.8 + 0.5) / 2)
    assert 0 <= report.latency_p50_ms <= report.latency_p95_ms
    assert "accuracy 0.6000" in report.format()
    with pytest.raises(InvalidInput):
        evaluate(_KeywordFake(), [])
