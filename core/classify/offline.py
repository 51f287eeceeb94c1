"""Classification step without network or API key: a local model picks the department, rules the priority."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.classify.base import Classification
from core.classify.train import (
    SHIPPED_MODEL_PATH,
    OfflineModel,
    config_examples,
    fit_model,
    fold_text,
    knowledge_examples,
    load_knowledge,
    read_model,
    ticket_text,
)
from core.errors import ClassifierUnavailable, InvalidInput
from core.ticket import Priority

log = logging.getLogger(__name__)

SUMMARY_CHARS = 120
_PRIORITY_SCAN_CHARS = 2000  # cues sit at the top; quoted history further down would only add false alarms

# Priority rules, checked in this order; the first group with a matching phrase decides. Phrases are regular
# expressions matched case-insensitively on word boundaries against the subject and the start of the body.
# Extend a tuple to teach a new phrase; tests/core/test_offline_classifier.py pins the behaviour.
_CALM = (  # the requester says it can wait: this beats every alarm word in the same text ("not urgent")
    r"not (?:that |very |super )?urgent",
    r"nothing urgent",
    r"no rush",
    r"no hurry",
    r"low priority",
    r"not (?:a )?priority",
    r"not time[- ]critical",
    r"not time[- ]sensitive",
    r"at your (?:earliest )?convenience",
    r"when(?:ever)? (?:you|someone|somebody) (?:has|have|gets?) (?:a )?(?:minute|moment|chance|time)",
    r"in your own time",
    r"whenever (?:possible|convenient)",
    r"no urgency",
)
_URGENT = (
    r"urgent(?:ly)?",
    r"asap",
    r"as soon as possible",
    r"emergency",
    r"critical",
    r"outage",
    r"immediately",
    r"down for (?:everyone|everybody|all|the whole \w+)",
    r"(?:nobody|no one|no-one|none of us) (?:can|is able to)",
    r"(?:everyone|everybody|whole (?:office|company|team|floor|building)|all users)\W+(?:\w+\W+){0,3}"
    r"(?:can'?t|cannot|unable|affected|down|offline|blocked)",
    r"(?:site|server|system|website|email|e-mail|network|internet|vpn|wifi|wi-fi|crm|erp|app|application|service|"
    r"production|prod|portal|payroll system) (?:is|are|has gone|went|seems) (?:completely )?(?:down|offline)",
    r"security (?:breach|incident)",
    r"data (?:breach|leak)",
    r"hacked",
    r"ransomware",
    r"malware",
    r"virus",
    r"(?:entered|typed|gave|shared) (?:in )?my (?:password|credentials|login)",
    r"can'?t work",
    r"cannot work",
    r"unable to work",
    r"can'?t do (?:any|my) (?:work|job)",
    r"smell of gas",
    r"gas leak",
    r"smoke",
    r"on fire",
    r"sparks",
    r"electric shock",
    r"flood(?:ed|ing)?",
    r"injur(?:ed|y)",
    r"stolen",
    r"lost my (?:work |company )?(?:laptop|phone|mobile)",
    r"sev ?1",
    r"p1",
    r"right now",
    r"in \d+ ?min(?:ute)?s",
)
_HIGH = (
    r"not working",
    r"(?:doesn'?t|does not|don'?t|isn'?t|is not|won'?t|will not|stopped) (?:work|working|start|"
    r"turn on|boot|load|open|connect|print|send|charge|close|lock)",
    r"stopped working",
    r"(?:can'?t|cannot|unable to|couldn'?t) (?:log ?in|login|sign in|access|connect|print|send|open|get in|get into)",
    r"locked out",
    r"account (?:is )?(?:locked|disabled)",
    r"broken",
    r"broke",
    r"error",
    r"crash(?:es|ed|ing)?",
    r"fail(?:s|ed|ing|ure)",
    r"stuck",
    r"frozen|freez(?:es|ing)",
    r"leak(?:s|ing)?",
    r"blocked",
    r"overflowing",
    r"no (?:power|heating|hot water|internet|network|signal|dial tone)",
    r"deadline",
    r"today",
    r"tonight",
    r"by tomorrow",
    r"this afternoon",
    r"overdue",
    r"late payment",
    r"not (?:been )?paid",
    r"underpaid",
    r"haven'?t (?:been paid|received my (?:salary|pay|wages))",
    r"declined",
    r"phishing",
    r"suspicious",
    r"scam",
    r"important",
    r"harass(?:ed|ment)?",
    r"bull(?:y|ying|ied)",
    r"discriminat\w*",
    r"threat\w*",
    r"unsafe",
    r"dangerous",
    r"trip hazard",
)
_LOW = (
    r"just wondering",
    r"i was wondering",
    r"quick question",
    r"curious",
    r"fyi",
    r"for your information",
    r"suggestion",
    r"idea",
    r"feedback",
    r"nice to have",
    r"would be nice",
    r"in the future",
    r"at some point",
    r"next (?:month|quarter|year)",
    r"no worries",
    r"thanks? (?:a lot|so much|everyone)",
    r"compliment",
)
# A plain question with no trouble word in it asks for information, not a fix: "how many days of leave do I have".
_QUESTION = re.compile(
    r"^(?:how|what|what'?s|where|when|who|which|is there|are there|do we|does the|can i|could i|may i|am i|are we|"
    r"is it|is the|do i|should i)\b|\?\s*$",
    re.IGNORECASE,
)


def _rule(phrases: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"(?<![\w'])(?:" + "|".join(phrases) + r")(?![\w'])", re.IGNORECASE)


_PRIORITY_RULES: tuple[tuple[Priority, re.Pattern[str]], ...] = (
    (Priority.LOW, _rule(_CALM)),
    (Priority.URGENT, _rule(_URGENT)),
    (Priority.HIGH, _rule(_HIGH)),
    (Priority.LOW, _rule(_LOW)),
)


def explain_priority(subject: str, body: str) -> tuple[Priority, str]:
    """The priority and why: the phrase that decided it, "question" or "default"."""
    text = _plain(f"{subject}\n{body[:_PRIORITY_SCAN_CHARS]}")
    for priority, pattern in _PRIORITY_RULES:
        match = pattern.search(text)
        if match:
            return priority, match.group(0).lower()
    if _QUESTION.search(text.strip()):
        return Priority.LOW, "question"
    return Priority.MEDIUM, "default"


def priority_for(subject: str, body: str) -> Priority:
    """LOW, MEDIUM, HIGH or URGENT from phrase rules; MEDIUM when nothing matches."""
    return explain_priority(subject, body)[0]


def _plain(text: str) -> str:
    # Curly apostrophes from phones and Outlook would otherwise hide "can’t" from "can't".
    return text.replace("\u2019", "'").replace("\u2018", "'")


# --- summary -------------------------------------------------------------------------------------------------------

_SUBJECT_PREFIX = re.compile(r"^\s*(?:(?:re|fw|fwd|aw|wg|sv|vs|tr|antw)\s*(?:\[\d+\])?\s*:|\[[^\]]{0,40}\])\s*", re.I)
_GENERIC_SUBJECT = re.compile(
    r"(?:help|help needed|help please|please help|question|quick question|a question|query|enquiry|inquiry|issue|"
    r"problem|request|urgent|important|hi|hello|hey|ticket|support|fyi|test|no subject|\(no subject\)|"
    r"it|hr|finance|facilities|general|hi there|hello there|thanks|thank you)[\s!.?:-]*",
    re.IGNORECASE,
)
_GREETING = re.compile(
    r"^(?:hi|hello|hey|hiya|dear|good (?:morning|afternoon|evening)|morning|afternoon|greetings)\b"
    r"(?:[ \w.'-]{0,40}?)(?:[,!:]|\s*$)\s*",
    re.IGNORECASE,
)
_PLEASANTRY = re.compile(
    r"^(?:i )?hope (?:you|this|all)\b|^sorry (?:to bother|for the)|^(?:i have |just )?a quick question\W*$|"
    r"^how are you\b|^thanks? in advance\b",
    re.IGNORECASE,
)
_SIGN_OFF = re.compile(
    r"^(?:thanks|thank you|many thanks|cheers|regards|kind regards|best regards|best|br|sent from my|--\s*$|__+)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def summarize(subject: str, body: str) -> str:
    """One line, at most ``SUMMARY_CHARS`` characters, taken from the ticket itself (nothing is generated).

    The subject if it says something, else the first informative sentence of the body, else whatever there is.
    """
    clean_subject = _clean_subject(subject)
    if _meaningful_subject(clean_subject):
        return _trim(clean_subject)
    sentence = _first_sentence(body)
    if sentence:
        return _trim(sentence)
    return _trim(clean_subject) or "(no text)"


def _clean_subject(subject: str) -> str:
    text = " ".join(subject.split())
    while True:
        stripped = _SUBJECT_PREFIX.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped


def _meaningful_subject(subject: str) -> bool:
    words = re.findall(r"[^\W\d_]{2,}", subject)
    return len(words) >= 2 and not _GENERIC_SUBJECT.fullmatch(subject)


def _first_sentence(body: str) -> str:
    kept: list[str] = []
    for raw in body.splitlines():
        line = " ".join(raw.split())
        if line.startswith(">"):
            continue  # quoted reply
        if _SIGN_OFF.match(line) and kept:
            break  # everything after a sign-off is signature
        kept.append(line)
    text = " ".join(kept)
    fallback = ""
    for sentence in _SENTENCE_END.split(text):
        sentence = _GREETING.sub("", sentence.strip(), count=1).strip()
        if not sentence or _PLEASANTRY.search(sentence) or _SIGN_OFF.match(sentence):
            continue
        if len(re.findall(r"[^\W\d_]{2,}", sentence)) >= 3:
            return sentence
        fallback = fallback or sentence
    return fallback


def _trim(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= SUMMARY_CHARS:
        return text
    cut = text[: SUMMARY_CHARS - 1]
    if " " in cut[SUMMARY_CHARS // 2 :]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:-") + "…"


# --- the classifier ------------------------------------------------------------------------------------------------


class OfflineClassifier:
    """Department from a local scikit-learn model, priority from phrase rules, and an extractive one-line summary.

    Needs no network and no key, so it answers when Claude cannot. Build it with ``load``.
    """

    name = "offline"

    def __init__(self, *, model: OfflineModel | None, departments: Sequence[str]) -> None:
        """``model`` None is allowed only for a single department, which then gets every ticket."""
        if not departments:
            raise ClassifierUnavailable("offline classifier: no departments configured")
        if model is None and len(departments) != 1:
            raise ClassifierUnavailable("offline classifier: no model for several departments")
        self.departments = tuple(departments)
        self.model = model
        # _columns[i]: the model labels that vote for departments[i]; labels of no configured department vote for
        # nobody, so their probability mass is simply left out and the best configured department wins.
        self._columns: tuple[tuple[int, ...], ...] = _columns_for(model, self.departments) if model else ((0,),)
        self.missing = tuple(d for d, cols in zip(self.departments, self._columns, strict=True) if not cols)

    @classmethod
    def load(
        cls,
        path: Path | None,
        departments: Sequence[str],
        descriptions: Mapping[str, str] | None = None,
        keywords: Mapping[str, Sequence[str]] | None = None,
    ) -> OfflineClassifier:
        """The trained model at ``path`` if that file exists, else the shipped one, fitted to ``departments``.

        The shipped model is used as it is when every configured department is one it knows (by name or alias,
        case-insensitively) and no extra keywords are configured. Otherwise a model is fitted now from the shipped
        examples of the known departments plus each department's configured description and keywords (well under
        a second). A trained model that knows none of the departments is set aside the same way, with a warning.

        Raises:
            ClassifierUnavailable: the model file is corrupt or unreadable, or the knowledge cannot be read.
        """
        departments = tuple(departments)
        if not departments:
            raise ClassifierUnavailable("offline classifier: no departments configured")
        if len(departments) == 1:
            return cls(model=None, departments=departments)
        descriptions = descriptions or {}
        keywords = {name: tuple(words) for name, words in (keywords or {}).items() if words}
        if path is not None and path.exists():
            trained = cls(model=read_model(path), departments=departments)
            if len(trained.missing) < len(departments):
                if trained.missing:
                    log.warning("model %s knows no examples of %s; they will not be chosen", path, trained.missing)
                return trained
            log.warning("model %s predicts none of the departments %s; using the shipped knowledge", path, departments)
        shipped = cls(model=read_model(SHIPPED_MODEL_PATH), departments=departments)
        if not shipped.missing and not keywords:
            return shipped
        return cls(model=_fit_for_config(departments, descriptions, keywords), departments=departments)

    def classify(self, subject: str, body: str) -> Classification:
        """Department, priority, confidence and summary for one ticket; takes about a millisecond."""
        started = time.perf_counter()
        text = ticket_text(subject, body)
        if self.model is None:
            department, confidence = self.departments[0], 1.0
        else:
            probabilities = self.model.probabilities(text)
            votes = [sum(float(probabilities[i]) for i in cols) for cols in self._columns]
            best = max(range(len(votes)), key=votes.__getitem__)
            department = self.departments[best]
            # Not renormalised over the configured departments: mass on unconfigured labels is doubt, and a low
            # confidence sends the ticket to triage (routing.confidence_threshold).
            confidence = min(1.0, max(0.0, votes[best])) if re.search(r"\w", text) else 0.0
        return Classification(
            department=department,
            priority=priority_for(subject, body),
            confidence=confidence,
            summary=summarize(subject, body),
            classifier=self.name,
            model=self.model.version if self.model else "single-department",
            latency_ms=(time.perf_counter() - started) * 1000,
        )


def _columns_for(model: OfflineModel, departments: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    keys = [_key(d) for d in departments]
    columns: list[list[int]] = [[] for _ in departments]
    for i, label in enumerate(model.labels):
        names = [label, *model.aliases.get(label, ())]
        # The label's own name first, then its aliases; a department can collect several labels, whose votes add up.
        for name in names:
            if _key(name) in keys:
                columns[keys.index(_key(name))].append(i)
                break
    return tuple(tuple(cols) for cols in columns)


def _key(name: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", fold_text(name)).split())


def _fit_for_config(
    departments: Sequence[str], descriptions: Mapping[str, str], keywords: Mapping[str, Sequence[str]]
) -> OfflineModel:
    try:
        knowledge = load_knowledge()
    except InvalidInput as exc:
        raise ClassifierUnavailable(f"offline classifier: {exc}") from exc
    examples = knowledge_examples(knowledge, departments)
    known = {label for _, label in examples}
    for name in departments:
        words = keywords.get(name, ())
        if name in known:
            examples += [pair for pair in config_examples(name, "", words) if pair[0] != name]
        else:
            examples += config_examples(name, descriptions.get(name, ""), words)
    try:
        return fit_model(examples, source="shipped knowledge + configured departments", version_prefix="config")
    except InvalidInput as exc:
        raise ClassifierUnavailable(f"offline classifier: cannot fit the configured departments: {exc}") from exc
