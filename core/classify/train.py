"""Training side of the offline classifier: knowledge YAML and ticket-history CSVs become model files; eval scores them.

The runtime half is ``core.classify.offline``. ``python -m core.classify.train --shipped`` rebuilds the model shipped in
``core/classify/knowledge/`` from the YAML next to it; see docs/offline-classifier.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import pickle
import re
import struct
import sys
import tempfile
import time
import unicodedata
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
import yaml
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from core.classify.base import Classifier
from core.errors import ClassifierUnavailable, InvalidInput, TicketbotError

log = logging.getLogger(__name__)

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"
SHIPPED_MODEL_PATH = KNOWLEDGE_DIR / "offline.joblib"
MODEL_FORMAT = "ticketbot.offline-model"
MODEL_FORMAT_VERSION = 1
MAX_TEXT_CHARS = 6000  # long threads add quoted noise, not signal, and would cost latency
SMALL_DATA = 5000  # below this many examples the model also reads character n-grams (typos matter more than volume)
HEAD_TOKENS = 6  # the subject and first words: their pairs are features of their own
RAW_CHAR_NGRAMS = (3, 6)  # character n-gram lengths of the raw_chars view (within words, padded at word edges)
WORD_GRAMS_CACHE = 20_000  # words whose raw_chars n-gram columns are remembered per model (about 7 MB at most)
MIN_LABEL_EXAMPLES_FOR_LOGISTIC_BLEND = 20  # fewer, and blend="auto" averages the members (_fit_average_blend)

FloatArray = npt.NDArray[np.float64]

_TOKEN = re.compile(r"\b\w\w+\b")
_CSV_FIELD_LIMIT = 16 * 1024 * 1024
_LOAD_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ImportError,
    MemoryError,
    RecursionError,
    OverflowError,
    LookupError,
    pickle.UnpicklingError,
    zlib.error,
    struct.error,
)


def ticket_text(subject: str, body: str) -> str:
    """The one text a model sees for a ticket, in training and at runtime alike."""
    text = f"{subject.strip()}\n{body.strip()}".strip()
    return text[:MAX_TEXT_CHARS]


def fold_text(text: str) -> str:
    """Lower-case and strip accents, so that 'Réunion' and 'reunion' are one word."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def word_features(text: str) -> list[str]:
    """Words, adjacent word pairs, and unordered pairs of the first words (mostly the subject).

    Module-level so that pickled models can find it again.
    """
    tokens: list[str] = _TOKEN.findall(fold_text(text))
    features = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
    head = sorted(set(tokens[:HEAD_TOKENS]))
    features += [f"{a}&{b}" for i, a in enumerate(head) for b in head[i + 1 :]]
    return features


def _sublinear_l2(counts: Any, idf: FloatArray | None, *, sublinear: bool = True) -> Any:
    """1 + log(tf) (or plain tf), optionally times idf, then unit length: long tickets must not outvote short ones."""
    matrix = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
    if sublinear:
        np.log(matrix.data, out=matrix.data)
        matrix.data += 1.0
    if idf is not None:
        matrix = sparse.csr_matrix(matrix.multiply(idf))
    return normalize(matrix, copy=False)


def _one_vs_rest(model: Any, n_classes: int) -> tuple[FloatArray, FloatArray]:
    """A fitted linear model's (coef, intercept) with one row per class, also when sklearn stores one for two."""
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if n_classes == 2 and coef.shape[0] == 1:
        return np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    return coef, intercept


class BlendedTextModel:
    """Linear text models over one ticket text, blended by a logistic regression into label probabilities.

    Members, each one score per label:
      * a LinearSVC on word and word-pair frequencies (sublinear tf, unit length);
      * the same features re-weighted per label by naive-Bayes log-count ratios (NBSVM, Wang & Manning 2012),
        which helps most on rare, telling words;
      * optionally (``raw_tf``) the same two again on plain term frequencies (unit length), which weigh repeated words
        more; their errors differ enough from the sublinear pair's to help the blend;
      * optionally (``raw_chars``) the same two again on character 3-6-grams within words, plain term frequencies at
        unit length: they see word parts and misspellings, so their errors differ from the word members';
      * optionally a LinearSVC on character n-grams, which forgives typos ("pasword", "vpn's").
    The blend is a multinomial logistic regression fitted on out-of-fold member scores, so its probabilities are not
    the overconfident in-sample kind and can be thresholded by ``routing.confidence_threshold``.
    The blend is linear in the member scores and each member is linear in its features, so after fitting, members and
    blend are folded into one dense weight matrix per feature view (``weights_``): classifying a ticket is one sparse
    dot product per view, however many members there are.
    """

    def __init__(
        self,
        *,
        word_c: float = 0.5,
        nb_c: float = 0.3,
        nb_alpha: float = 1.0,
        char_c: float | None = None,
        idf: bool = False,
        min_df: int = 2,
        blend: str = "logistic",
        blend_c: float = 1.0,
        folds: int = 3,
        class_weight: str | None = None,
        raw_tf: bool = False,
        raw_chars: bool = False,
        random_state: int = 0,
    ) -> None:
        self.word_c = word_c
        self.nb_c = nb_c
        self.nb_alpha = nb_alpha
        self.char_c = char_c
        self.idf = idf
        self.min_df = min_df
        self.blend = blend
        self.blend_c = blend_c
        self.folds = folds
        self.class_weight = class_weight
        self.raw_tf = raw_tf
        self.raw_chars = raw_chars
        self.random_state = random_state
        self.classes_: tuple[str, ...] = ()
        self.fit_warnings_: list[str] = []
        self.weights_: dict[str, FloatArray] = {}
        self.intercept_: FloatArray = np.zeros(0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle; models saved before the folding (members plus blend, no ``weights_``) are folded on load."""
        self.__dict__.update(state)
        self.__dict__.setdefault("raw_tf", False)
        self.__dict__.setdefault("raw_chars", False)
        self.__dict__.setdefault("raw_chars_", None)
        if "weights_" not in state and "members_" in state:
            self._fold()

    def params(self) -> dict[str, Any]:
        """The constructor arguments, for metadata and the model version."""
        return {
            "word_c": self.word_c,
            "nb_c": self.nb_c,
            "nb_alpha": self.nb_alpha,
            "char_c": self.char_c,
            "idf": self.idf,
            "min_df": self.min_df,
            "blend": self.blend,
            "blend_c": self.blend_c,
            "folds": self.folds,
            "class_weight": self.class_weight,
            **({"raw_tf": True} if self.raw_tf else {}),  # absent when off: older models keep their version
            **({"raw_chars": True} if self.raw_chars else {}),  # likewise
        }

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> BlendedTextModel:
        """Fit on ``texts`` with one label each; at least two distinct labels are needed."""
        if len(texts) != len(labels):
            raise InvalidInput(f"{len(texts)} texts but {len(labels)} labels")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise InvalidInput(f"training needs at least two different labels, got {classes}")
        self.classes_ = tuple(classes)
        y = np.searchsorted(np.array(classes), np.array(labels))
        with warnings.catch_warnings(record=True) as caught:
            # Recorded, not raised: a LinearSVC that stopped at max_iter still classifies well, and the report says so.
            warnings.simplefilter("always")
            self._fit(list(texts), y)
        self.fit_warnings_ = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        return self

    def _fit(self, texts: list[str], y: npt.NDArray[np.intp]) -> None:
        min_df = self.min_df if len(texts) >= 4 * self.min_df else 1
        self.words_ = CountVectorizer(analyzer=word_features, min_df=min_df, dtype=np.float64)
        counts = self.words_.fit_transform(texts)
        self.words_.stop_words_ = None  # the pruned vocabulary is only needed for introspection and bloats the file
        self.idf_: FloatArray | None = None
        if self.idf:
            df = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
            self.idf_ = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
        views: dict[str, Any] = {"words": _sublinear_l2(counts, self.idf_)}
        if self.raw_tf:
            views["raw_words"] = _sublinear_l2(counts, self.idf_, sublinear=False)
        self.raw_chars_: CountVectorizer | None = None
        if self.raw_chars:
            self.raw_chars_ = CountVectorizer(
                analyzer="char_wb", ngram_range=RAW_CHAR_NGRAMS, min_df=min_df, preprocessor=fold_text, dtype=np.float64
            )
            views["raw_chars"] = _sublinear_l2(self.raw_chars_.fit_transform(texts), None, sublinear=False)
            self.raw_chars_.stop_words_ = None
        self.chars_: TfidfVectorizer | None = None
        if self.char_c is not None:
            self.chars_ = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=(2, 5),
                sublinear_tf=True,
                min_df=min_df,
                preprocessor=fold_text,
                dtype=np.float64,
            )
            views["chars"] = self.chars_.fit_transform(texts)
            self.chars_.stop_words_ = None
        n_classes = len(self.classes_)
        smallest = int(np.bincount(y, minlength=n_classes).min())
        n_folds = min(self.folds, smallest)
        if n_folds >= 2:
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self.random_state)
            blend_x = np.zeros((len(texts), len(self._member_views()) * n_classes))
            for train_idx, test_idx in splitter.split(np.zeros(len(y)), y):
                members = self._fit_members(views, y, train_idx)
                held_out = {name: matrix[test_idx] for name, matrix in views.items()}
                blend_x[test_idx] = self._member_scores(members, held_out)
            self.members_ = self._fit_members(views, y, np.arange(len(y)))
        else:
            # Some label has a single example: no honest out-of-fold scores exist, so the blend sees in-sample ones.
            self.members_ = self._fit_members(views, y, np.arange(len(y)))
            blend_x = self._member_scores(self.members_, views)
        if self.blend == "average" or (self.blend == "auto" and smallest < MIN_LABEL_EXAMPLES_FOR_LOGISTIC_BLEND):
            self._fit_average_blend(blend_x, y)
        else:
            blend = LogisticRegression(C=self.blend_c, max_iter=2000).fit(blend_x, y)
            self.blend_coef_, self.blend_intercept_ = _one_vs_rest(blend, n_classes)
            if n_classes == 2:
                # sklearn's binary logistic regression is one logit; as a softmax over two it is half of it per side.
                self.blend_coef_, self.blend_intercept_ = self.blend_coef_ / 2, self.blend_intercept_ / 2
        self._fold()

    def _fold(self) -> None:
        """Fold members and blend into one weight matrix per feature view, then drop them.

        logits = B . [W_1 x_1 + b_1, ..., W_m x_m + b_m] + c = sum over views v of (sum of B_i W_i for the members i
        reading v) x_v + (c + sum of B_i b_i), where B_i is the blend's block of columns for member i.
        """
        n_classes = len(self.classes_)
        weights: dict[str, FloatArray] = {}
        intercept = np.array(self.blend_intercept_, dtype=np.float64, copy=True)
        for i, ((coef, member_intercept), view) in enumerate(zip(self.members_, self._member_views(), strict=True)):
            block = self.blend_coef_[:, i * n_classes : (i + 1) * n_classes]
            folded = block @ coef
            weights[view] = weights[view] + folded if view in weights else folded
            intercept += block @ member_intercept
        self.weights_ = weights
        self.intercept_ = intercept
        # Only the folded weights are needed to classify; the members would double or triple the file.
        self.members_ = []

    def _fit_average_blend(self, blend_x: FloatArray, y: npt.NDArray[np.intp]) -> None:
        """The members' mean score times one temperature, chosen to minimise log-loss on the out-of-fold scores.

        Two parameters' worth of blend for small data: a full logistic regression on a few hundred out-of-fold rows
        learns label priors more than anything, and then even a training example can lose to the biggest label.
        """
        n_classes = len(self.classes_)
        n_members = len(self._member_views())
        mean = np.hstack([np.eye(n_classes)] * n_members) / n_members
        averaged = blend_x @ mean.T
        best_t, best_loss = 1.0, math.inf
        for t in np.geomspace(0.5, 50.0, 60):
            logits = averaged * t
            logits -= logits.max(axis=1, keepdims=True)
            loss = float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y]))
            if loss < best_loss:
                best_t, best_loss = float(t), loss
        self.blend_coef_ = mean * best_t
        self.blend_intercept_ = np.zeros(n_classes)

    def _member_views(self) -> list[str]:
        """The feature view each member reads, in member order (the blend's column blocks follow it)."""
        views = ["words", "words"]
        if getattr(self, "raw_tf", False):
            views += ["raw_words", "raw_words"]
        if getattr(self, "raw_chars", False):
            views += ["raw_chars", "raw_chars"]
        if self.char_c is not None:
            views.append("chars")
        return views

    def _fit_members(
        self, views: Mapping[str, Any], y: npt.NDArray[np.intp], idx: npt.NDArray[np.intp]
    ) -> list[tuple[FloatArray, FloatArray]]:
        yy = y[idx]
        members = self._word_members(views["words"][idx], yy)
        if self.raw_tf:
            members += self._word_members(views["raw_words"][idx], yy)
        if self.raw_chars:
            members += self._word_members(views["raw_chars"][idx], yy)
        if self.char_c is not None:
            members.append(self._svc(self.char_c, views["chars"][idx], yy, len(self.classes_)))
        return members

    def _word_members(self, x: Any, yy: npt.NDArray[np.intp]) -> list[tuple[FloatArray, FloatArray]]:
        """A LinearSVC and an NBSVM on one view of the features (words, or character n-grams for ``raw_chars``)."""
        n_classes = len(self.classes_)
        members = [self._svc(self.word_c, x, yy, n_classes)]
        present = sparse.csr_matrix(x > 0, dtype=np.float64)
        nb_coef = np.zeros((n_classes, x.shape[1]))
        nb_intercept = np.zeros(n_classes)
        for k in range(n_classes):
            positive = yy == k
            p = self.nb_alpha + np.asarray(present[positive].sum(axis=0)).ravel()
            q = self.nb_alpha + np.asarray(present[~positive].sum(axis=0)).ravel()
            ratio = np.log((p / p.sum()) / (q / q.sum()))
            svc = LinearSVC(C=self.nb_c, class_weight=self.class_weight, random_state=self.random_state)
            svc.fit(sparse.csr_matrix(x.multiply(ratio)), positive.astype(np.int64))
            # (x * r) . w == x . (r * w): fold the ratio into the weights, so scoring needs no per-label copy of x.
            nb_coef[k] = ratio * np.asarray(svc.coef_[0])
            nb_intercept[k] = float(svc.intercept_[0])
        members.append((nb_coef, nb_intercept))
        return members

    def _svc(self, c: float, x: Any, y: npt.NDArray[np.intp], n_classes: int) -> tuple[FloatArray, FloatArray]:
        svc = LinearSVC(C=c, class_weight=self.class_weight, random_state=self.random_state).fit(x, y)
        return _one_vs_rest(svc, n_classes)

    def _member_scores(self, members: list[tuple[FloatArray, FloatArray]], views: Mapping[str, Any]) -> FloatArray:
        return np.hstack(
            [
                np.asarray(views[view] @ coef.T) + intercept
                for (coef, intercept), view in zip(members, self._member_views(), strict=True)
            ]
        )

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """Probabilities, one row per text, one column per label in ``classes_`` order."""
        if not texts:
            return np.zeros((0, len(self.classes_)))
        return np.vstack([self.proba_one(text) for text in texts])

    def _raw_char_row(self, text: str) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """The raw_chars view's (column indices, counts) for one text, as its CountVectorizer would count them.

        char_wb n-grams never cross a word, so each word's n-grams are looked up once and remembered: slicing
        every n-gram of every word in Python was most of a ticket's scoring time (0.6 of 0.85 ms p50).
        """
        vectorizer = self.raw_chars_
        assert vectorizer is not None
        vocabulary = vectorizer.vocabulary_
        cache: dict[str, tuple[int, ...]] = self.__dict__.setdefault("_word_grams", {})
        counts: Counter[int] = Counter()
        for word in fold_text(text).split():
            grams = cache.get(word)
            if grams is None:
                grams = tuple(vocabulary[g] for g in _char_wb_ngrams(word, RAW_CHAR_NGRAMS) if g in vocabulary)
                if len(cache) < WORD_GRAMS_CACHE:  # a bounded memory: tickets reuse a few thousand words
                    cache[word] = grams
            counts.update(grams)
        idx = np.fromiter(counts, dtype=np.intp, count=len(counts))
        return idx, np.fromiter(counts.values(), dtype=np.float64, count=len(counts))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_word_grams", None)  # a cache, rebuilt as tickets are scored
        return state

    def proba_one(self, text: str) -> FloatArray:
        """Probabilities for one text.

        Vectorises by dictionary lookups instead of through sklearn's transform, whose input validation alone costs
        more than the arithmetic; ``predict_proba_batch`` is the sklearn path and gives the same numbers.
        """
        idx, counts = _count_row(word_features(text), self.words_.vocabulary_)
        logits = self.intercept_ + self.weights_["words"][:, idx] @ _unit_row(idx, counts, self.idf_, sublinear=True)
        if "raw_words" in self.weights_:
            logits += self.weights_["raw_words"][:, idx] @ _unit_row(idx, counts, self.idf_, sublinear=False)
        if self.raw_chars_ is not None:
            ridx, rcounts = self._raw_char_row(text)
            logits += self.weights_["raw_chars"][:, ridx] @ _unit_row(ridx, rcounts, None, sublinear=False)
        if self.chars_ is not None:
            analyzer = self.chars_.build_analyzer()
            cidx, ccounts = _count_row(analyzer(text), self.chars_.vocabulary_)
            logits += self.weights_["chars"][:, cidx] @ _unit_row(cidx, ccounts, self.chars_.idf_, sublinear=True)
        row: FloatArray = _softmax(logits[np.newaxis, :])[0]
        return row

    def predict_proba_batch(self, texts: Sequence[str]) -> FloatArray:
        """``predict_proba`` through sklearn's sparse transforms: faster for thousands of texts at once."""
        counts = self.words_.transform(texts)
        logits = np.asarray(_sublinear_l2(counts, self.idf_) @ self.weights_["words"].T) + self.intercept_
        if "raw_words" in self.weights_:
            logits += np.asarray(_sublinear_l2(counts, self.idf_, sublinear=False) @ self.weights_["raw_words"].T)
        if self.raw_chars_ is not None:
            raw_chars = _sublinear_l2(self.raw_chars_.transform(texts), None, sublinear=False)
            logits += np.asarray(raw_chars @ self.weights_["raw_chars"].T)
        if self.chars_ is not None:
            logits += np.asarray(self.chars_.transform(texts) @ self.weights_["chars"].T)
        return _softmax(logits)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label for each text."""
        return [self.classes_[i] for i in self.predict_proba(texts).argmax(axis=1)]


def _char_wb_ngrams(word: str, ngram_range: tuple[int, int]) -> Iterator[str]:
    """One word's character n-grams, padded with a space at each edge, exactly as sklearn's ``char_wb`` analyzer
    makes them (a word shorter than n gives itself, padded, once)."""
    padded = " " + word + " "
    length = len(padded)
    for n in range(ngram_range[0], ngram_range[1] + 1):
        offset = 0
        yield padded[:n]
        while offset + n < length:
            offset += 1
            yield padded[offset : offset + n]
        if offset == 0:
            break


def _count_row(features: Iterable[str], vocabulary: Mapping[str, int]) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """One text's (column indices, term counts) over ``vocabulary``."""
    counts = Counter(f for f in features if f in vocabulary)
    idx = np.fromiter((vocabulary[f] for f in counts), dtype=np.intp, count=len(counts))
    return idx, np.fromiter(counts.values(), dtype=np.float64, count=len(counts))


def _unit_row(idx: npt.NDArray[np.intp], counts: FloatArray, idf: FloatArray | None, *, sublinear: bool) -> FloatArray:
    """``_count_row``'s counts as (1 + log) tf[-idf] at unit length, as ``_sublinear_l2`` computes them."""
    values = 1.0 + np.log(counts) if sublinear else counts.copy()
    if idf is not None:
        values *= idf[idx]
    norm = float(np.sqrt(values @ values))
    return values / norm if norm else values


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return result


def estimator_for(n_examples: int) -> BlendedTextModel:
    """The estimator settings chosen by measurement for this much data (docs/offline-classifier.md has the numbers)."""
    if n_examples < SMALL_DATA:
        # Hand-written knowledge and small histories: every word counts (min_df 1, idf), typos are common (chars),
        # and the labels are unevenly represented (balanced weights).
        return BlendedTextModel(
            word_c=1.0, nb_c=0.3, char_c=1.0, idf=True, min_df=1, folds=5, class_weight="balanced", blend="auto"
        )
    return BlendedTextModel(
        word_c=0.5, nb_c=0.3, char_c=None, idf=False, min_df=2, folds=3, raw_tf=True, raw_chars=True
    )


# --- knowledge -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DepartmentKnowledge:
    """One department as the shipped knowledge describes it: names it answers to, keywords and example requests."""

    name: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()

    def answers_to(self, name: str) -> bool:
        """Whether a configured department called ``name`` is this one (case-insensitive, aliases included)."""
        wanted = _name_key(name)
        return wanted == _name_key(self.name) or any(wanted == _name_key(a) for a in self.aliases)

    def training_texts(self) -> list[str]:
        """Examples, then keywords and the description as short examples of their own."""
        return [*self.examples, *self.keywords, *([self.description] if self.description else [])]


def _name_key(name: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", fold_text(name)).split())


def load_knowledge(directory: Path = KNOWLEDGE_DIR) -> tuple[DepartmentKnowledge, ...]:
    """Every ``*.yaml`` department file in ``directory``, sorted by file name.

    Raises:
        InvalidInput: a file is unreadable or not in the knowledge format; the message names the file and field.
    """
    departments = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InvalidInput(f"{path}: cannot read knowledge YAML: {exc}") from exc
        departments.append(_department_from_yaml(path, data))
    if not departments:
        raise InvalidInput(f"{directory}: no department *.yaml knowledge files")
    names = [_name_key(d.name) for d in departments]
    if len(set(names)) != len(names):
        raise InvalidInput(f"{directory}: two knowledge files describe the same department: {names}")
    return tuple(departments)


def _department_from_yaml(path: Path, data: object) -> DepartmentKnowledge:
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: the top level must be a mapping with name, description, keywords, examples")
    unknown = set(data) - {"name", "description", "aliases", "keywords", "examples"}
    if unknown:
        raise InvalidInput(f"{path}: unknown keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{path}: 'name' must be a non-empty string")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise InvalidInput(f"{path}: 'description' must be a string")

    def strings(key: str) -> tuple[str, ...]:
        value = data.get(key) or []
        if not isinstance(value, list):
            raise InvalidInput(f"{path}: '{key}' must be a list")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                hint = " (quote items that contain ': ')" if isinstance(item, dict) else ""
                raise InvalidInput(f"{path}: {key}[{i}] must be a non-empty string, got {item!r}{hint}")
        return tuple(item.strip() for item in value)

    examples = strings("examples")
    if not examples:
        raise InvalidInput(f"{path}: 'examples' must list at least one example request")
    return DepartmentKnowledge(name.strip(), description.strip(), strings("aliases"), strings("keywords"), examples)


def knowledge_digest(knowledge: Sequence[DepartmentKnowledge]) -> str:
    """A hash of the knowledge content: the shipped model records it, and a test checks it is current."""
    canonical = json.dumps(
        [[d.name, d.description, d.aliases, d.keywords, d.examples] for d in knowledge], ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def knowledge_examples(
    knowledge: Sequence[DepartmentKnowledge], departments: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """(text, department) pairs from the knowledge; with ``departments``, only those, spelled as configured."""
    pairs: list[tuple[str, str]] = []
    for dept in knowledge:
        label = dept.name
        if departments is not None:
            match = next((d for d in departments if dept.answers_to(d)), None)
            if match is None:
                continue
            label = match
        pairs.extend((text, label) for text in dept.training_texts())
    return pairs


def config_examples(name: str, description: str = "", keywords: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Short synthetic examples for a department known only from its config: name, description, keywords."""
    texts = [name, *([description] if description.strip() else [])]
    for keyword in keywords:
        # A few carrier phrases per keyword; they are shared by every department, so only the keyword tells them apart.
        texts += [keyword, f"question about {keyword}", f"problem with {keyword}", f"I need help with {keyword}"]
    return [(text, name) for text in texts]


# --- the model and its file ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfflineModel:
    """A trained estimator plus what is known about it; the unit saved to and loaded from a model file."""

    estimator: BlendedTextModel
    labels: tuple[str, ...]
    version: str
    trained_at: datetime
    source: str
    examples: int
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # label -> other names it answers to
    knowledge_digest: str | None = None

    def probabilities(self, text: str) -> FloatArray:
        """Label probabilities for one text, in ``labels`` order."""
        return self.estimator.proba_one(text)


def fit_model(
    examples: Sequence[tuple[str, str]],
    *,
    source: str,
    version_prefix: str = "trained",
    aliases: Mapping[str, tuple[str, ...]] | None = None,
    digest: str | None = None,
    estimator: BlendedTextModel | None = None,
) -> OfflineModel:
    """Fit a model on (text, label) pairs.

    Raises:
        InvalidInput: fewer than two labels, or no text at all.
    """
    pairs = [(text[:MAX_TEXT_CHARS], label) for text, label in examples if text.strip() and label.strip()]
    if not pairs:
        raise InvalidInput("no training examples with both text and label")
    estimator = estimator or estimator_for(len(pairs))
    texts = [t for t, _ in pairs]
    labels = [label for _, label in pairs]
    try:
        estimator.fit(texts, labels)
    except ValueError as exc:  # sklearn's "empty vocabulary": no text has a word of two letters or more
        raise InvalidInput(f"cannot train on these examples: {exc}") from exc
    hasher = hashlib.sha256(json.dumps(estimator.params(), sort_keys=True).encode())
    for text, label in pairs:
        hasher.update(f"{label}\x1f{text}\x1e".encode())
    return OfflineModel(
        estimator=estimator,
        labels=estimator.classes_,
        version=f"{version_prefix}-{hasher.hexdigest()[:10]}",
        trained_at=datetime.now(UTC),
        source=source,
        examples=len(pairs),
        aliases=dict(aliases or {}),
        knowledge_digest=digest,
    )


def fit_shipped_model(knowledge: Sequence[DepartmentKnowledge] | None = None) -> OfflineModel:
    """The model shipped in ``core/classify/knowledge/``, rebuilt from the knowledge YAML."""
    knowledge = knowledge or load_knowledge()
    return fit_model(
        knowledge_examples(knowledge),
        source="shipped knowledge",
        version_prefix="shipped",
        aliases={d.name: d.aliases for d in knowledge},
        digest=knowledge_digest(knowledge),
    )


def save_model(model: OfflineModel, path: Path) -> None:
    """Write ``model`` to ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "version": model.version,
        "labels": list(model.labels),
        "trained_at": model.trained_at.isoformat(),
        "source": model.source,
        "examples": model.examples,
        "aliases": {label: list(names) for label, names in model.aliases.items()},
        "knowledge_digest": model.knowledge_digest,
        "sklearn_version": sklearn.__version__,
        "estimator": model.estimator,
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            joblib.dump(payload, fh, compress=3)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the model is no secret and the service may be another user
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_model(path: Path) -> OfflineModel:
    """Load a model file written by ``save_model``.

    The file is a pickle: load only files you wrote (the configured model path or the shipped one).

    Raises:
        ClassifierUnavailable: the file is missing, unreadable, corrupt or not a ticketbot model.
    """
    with warnings.catch_warnings(record=True) as caught:
        # A model pickled by another scikit-learn version warns on load; log it rather than fail (tests turn warnings
        # into errors) and let the format checks below decide.
        warnings.simplefilter("always")
        try:
            payload = joblib.load(path)
        except FileNotFoundError as exc:
            raise ClassifierUnavailable(f"{path}: no model file") from exc
        except _LOAD_ERRORS as exc:
            # Corrupt bytes fail inside pickle, zlib or the objects' own __setstate__, each in its own way.
            raise ClassifierUnavailable(f"{path}: unreadable model file ({type(exc).__name__}: {exc})") from exc
    for warning in caught:
        log.warning("loading %s: %s", path, warning.message)
    return _model_from_payload(path, payload)


def _model_from_payload(path: Path, payload: object) -> OfflineModel:
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ClassifierUnavailable(f"{path}: not a ticketbot offline model file")
    if payload.get("format_version") != MODEL_FORMAT_VERSION:
        raise ClassifierUnavailable(
            f"{path}: model format {payload.get('format_version')}, this version reads {MODEL_FORMAT_VERSION}; retrain"
        )
    estimator = payload.get("estimator")
    labels = payload.get("labels")
    if not isinstance(estimator, BlendedTextModel) or not isinstance(labels, list) or not labels:
        raise ClassifierUnavailable(f"{path}: model file is missing its estimator or labels")
    if tuple(labels) != tuple(estimator.classes_):
        raise ClassifierUnavailable(f"{path}: labels {labels} do not match the estimator's {estimator.classes_}")
    try:
        trained_at = datetime.fromisoformat(str(payload.get("trained_at")))
    except ValueError as exc:
        raise ClassifierUnavailable(f"{path}: bad trained_at {payload.get('trained_at')!r}") from exc
    aliases = payload.get("aliases") or {}
    return OfflineModel(
        estimator=estimator,
        labels=tuple(str(label) for label in labels),
        version=str(payload.get("version")),
        trained_at=trained_at,
        source=str(payload.get("source")),
        examples=int(payload.get("examples") or 0),
        aliases={str(k): tuple(str(a) for a in v) for k, v in dict(aliases).items()},
        knowledge_digest=payload.get("knowledge_digest"),
    )


# --- training from ticket history ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabeledText:
    """One labelled ticket from a history CSV or an eval set."""

    subject: str
    body: str
    label: str


@dataclass(slots=True)
class CsvStats:
    """What reading a labelled CSV skipped, counted while the rows stream past."""

    rows: int = 0
    skipped_empty: int = 0
    dropped_unmapped: int = 0
    unmapped_labels: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class TrainReport:
    """The outcome of ``train_from_csv``: the model plus the counts a person needs to trust it."""

    model: OfflineModel
    csv: CsvStats
    csv_examples: int
    shipped_examples: int
    extra_examples: int
    label_counts: Mapping[str, int]
    seconds: float
    warnings: tuple[str, ...] = ()


def load_mapping(path: Path) -> dict[str, str | None]:
    """Read a ``--map`` JSON file: CSV label -> department, or None to drop that label's rows.

    Two shapes are accepted: ``{"label": "Department"}`` and the datasets' ``department_mapping.suggested.json``
    (``{"label": {"department": "X" | null, "fallback": "Y"}, "_note": ...}``), where a null department takes
    ``fallback`` if there is one. Keys starting with ``_`` are comments.

    Raises:
        InvalidInput: unreadable file, not JSON, or an entry of neither shape.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the mapping file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: the mapping file is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: the mapping must be a JSON object of label -> department")
    mapping: dict[str, str | None] = {}
    for label, value in data.items():
        if label.startswith("_"):
            continue
        if isinstance(value, str) or value is None:
            mapping[label] = value.strip() or None if isinstance(value, str) else None
        elif isinstance(value, dict):
            target = value.get("department")
            if target is None:
                target = value.get("fallback")
            if target is not None and not isinstance(target, str):
                raise InvalidInput(f"{path}: {label!r}: 'department'/'fallback' must be a string or null")
            mapping[label] = target.strip() or None if isinstance(target, str) else None
        else:
            raise InvalidInput(f"{path}: {label!r} maps to {value!r}; expected a department name or an object")
    if not mapping:
        raise InvalidInput(f"{path}: the mapping has no labels")
    return mapping


def read_labeled_csv(
    csv_path: Path,
    text_col: str,
    label_col: str,
    *,
    subject_col: str | None = None,
    mapping: Mapping[str, str | None] | None = None,
    stats: CsvStats | None = None,
) -> Iterator[LabeledText]:
    """Stream labelled rows from a CSV (UTF-8, header row), mapping labels through ``mapping`` if given.

    Rows with an empty text or label are skipped; rows whose label maps to None are dropped; labels the mapping does
    not mention are kept as they are. ``stats`` counts all three as the rows go by.

    Raises:
        InvalidInput: unreadable or empty file, a missing column, or malformed CSV; the message names the problem.
    """
    stats = stats if stats is not None else CsvStats()
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))  # email bodies beat the 128 KiB default
    try:
        fh = open(csv_path, encoding="utf-8-sig", newline="")  # utf-8-sig: spreadsheet exports start with a BOM
    except OSError as exc:
        raise InvalidInput(f"{csv_path}: cannot open the CSV file: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh, strict=True)  # strict: an unbalanced quote is an error, not a silent giant field
        try:
            header = reader.fieldnames
            if not header:
                raise InvalidInput(f"{csv_path}: the CSV file is empty (no header row)")
            for role, column in (("text", text_col), ("label", label_col), ("subject", subject_col)):
                if column is not None and column not in header:
                    raise InvalidInput(f"{csv_path}: no {role} column {column!r}; the columns are {list(header)}")
            for record in reader:
                stats.rows += 1
                text = (record.get(text_col) or "").strip()
                subject = (record.get(subject_col) or "").strip() if subject_col else ""
                label = (record.get(label_col) or "").strip()
                if not (text or subject) or not label:
                    stats.skipped_empty += 1
                    continue
                if mapping is not None:
                    if label in mapping:
                        target = mapping[label]
                        if target is None:
                            stats.dropped_unmapped += 1
                            continue
                        label = target
                    else:
                        stats.unmapped_labels[label] += 1
                yield LabeledText(subject, text, label)
        except csv.Error as exc:
            raise InvalidInput(f"{csv_path}: malformed CSV near line {reader.line_num}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{csv_path}: not UTF-8 text near line {reader.line_num + 1}: {exc.reason}") from exc


def train_from_csv(
    csv_path: Path,
    text_col: str,
    label_col: str,
    *,
    subject_col: str | None = None,
    mapping: Mapping[str, str | None] | None = None,
    include_shipped: bool = True,
    extra_examples: Sequence[tuple[str, str]] = (),
    departments: Sequence[str] | None = None,
) -> TrainReport:
    """Train a model on a ticket-history CSV, plus the shipped knowledge and ``extra_examples`` (text, label).

    With ``departments`` (the configured names), labels are matched to them case-insensitively and respelled as
    configured, shipped knowledge is limited to them, and labels that are no department are reported in ``warnings``.
    The model is returned in the report, not saved: call ``save_model``.

    Raises:
        InvalidInput: bad CSV or columns (see ``read_labeled_csv``), no usable rows, or fewer than two labels.
    """
    started = time.perf_counter()
    stats = CsvStats()
    rows = read_labeled_csv(csv_path, text_col, label_col, subject_col=subject_col, mapping=mapping, stats=stats)
    csv_pairs = [(ticket_text(row.subject, row.body), row.label) for row in rows]
    if stats.rows == 0:
        raise InvalidInput(f"{csv_path}: the CSV file has a header but no rows")
    if not csv_pairs:
        raise InvalidInput(
            f"{csv_path}: none of the {stats.rows} rows has both a {text_col!r} text and a {label_col!r} label"
            + (" after mapping" if mapping is not None else "")
        )
    notes: list[str] = []
    if stats.unmapped_labels:
        notes.append(f"labels not in the mapping, kept as they are: {dict(stats.unmapped_labels)}")
    if stats.dropped_unmapped:
        notes.append(f"{stats.dropped_unmapped} rows dropped: their label maps to no department")
    knowledge = load_knowledge() if include_shipped else ()
    shipped_pairs = knowledge_examples(knowledge, departments)
    extra = [(text, label) for text, label in extra_examples]
    pairs = csv_pairs + shipped_pairs + extra
    if departments is not None:
        pairs, unknown = _respell(pairs, departments)
        if unknown:
            notes.append(f"labels that are no configured department (they will route to the closest one): {unknown}")
    sources = [csv_path.name] + (["shipped knowledge"] if shipped_pairs else []) + (["extra examples"] if extra else [])
    model = fit_model(pairs, source=" + ".join(sources), aliases={d.name: d.aliases for d in knowledge})
    return TrainReport(
        model=model,
        csv=stats,
        csv_examples=len(csv_pairs),
        shipped_examples=len(shipped_pairs),
        extra_examples=len(extra),
        label_counts=dict(sorted(Counter(label for _, label in pairs).items())),
        seconds=time.perf_counter() - started,
        warnings=tuple(notes + model.estimator.fit_warnings_),
    )


def train_from_examples(
    examples: Sequence[tuple[str, str]], *, departments: Sequence[str], include_shipped: bool = True
) -> OfflineModel:
    """Train on (text, department) pairs, such as the organisation's ticket history and corrections, plus the
    shipped knowledge for the configured departments.

    Raises:
        InvalidInput: no examples at all, or fewer than two departments among them.
    """
    knowledge = load_knowledge() if include_shipped else ()
    pairs, _unknown = _respell(list(examples) + knowledge_examples(knowledge, departments), departments)
    sources = ["history"] + (["shipped knowledge"] if knowledge else [])
    return fit_model(pairs, source=" + ".join(sources), aliases={d.name: d.aliases for d in knowledge})


def _respell(pairs: list[tuple[str, str]], departments: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    spelled = {_name_key(d): d for d in departments}
    unknown: set[str] = set()
    result = []
    for text, label in pairs:
        configured = spelled.get(_name_key(label))
        if configured is None:
            unknown.add(label)
        result.append((text, configured or label))
    return result, sorted(unknown)


# --- evaluation ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelScore:
    """Precision, recall and F1 of one label, and how many rows carried it."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True, slots=True)
class EvalReport:
    """How a classifier did on labelled rows: accuracy, macro-F1, per-label scores, confusions and latency."""

    rows: int
    accuracy: float
    macro_f1: float
    labels: tuple[str, ...]
    per_label: Mapping[str, LabelScore]
    confusion: tuple[tuple[int, ...], ...]  # confusion[i][j]: rows labelled labels[i] predicted labels[j]
    latency_p50_ms: float
    latency_p95_ms: float
    unavailable: int = 0  # rows where the classifier raised ClassifierUnavailable (counted as wrong)

    def format(self) -> str:
        """A plain-text report: headline figures, the per-label table and the confusion matrix."""
        width = max(12, *(len(label) for label in self.labels))
        lines = [
            f"rows {self.rows}  accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}  "
            f"latency p50 {self.latency_p50_ms:.2f} ms  p95 {self.latency_p95_ms:.2f} ms"
            + (f"  unavailable {self.unavailable}" if self.unavailable else ""),
            "",
            f"{'label':<{width}}  precision  recall     f1  support",
        ]
        for label in self.labels:
            s = self.per_label[label]
            lines.append(f"{label:<{width}}  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:5.3f}  {s.support:7d}")
        short = [label[:6] for label in self.labels]
        lines += ["", "confusion (rows: true, columns: predicted)"]
        lines.append(" " * width + "  " + " ".join(f"{s:>6}" for s in short))
        for label, row in zip(self.labels, self.confusion, strict=True):
            lines.append(f"{label:<{width}}  " + " ".join(f"{n:6d}" for n in row))
        return "\n".join(lines)


def evaluate(classifier: Classifier, rows: Iterable[LabeledText]) -> EvalReport:
    """Classify every row one at a time, as tickets arrive, and score the departments against the labels.

    Predictions are compared case-insensitively. Latency is the wall time of each ``classify`` call.
    """
    truth: list[str] = []
    predicted: list[str] = []
    latencies: list[float] = []
    unavailable = 0
    for row in rows:
        started = time.perf_counter()
        try:
            department = classifier.classify(row.subject, row.body).department
        except ClassifierUnavailable:
            department = ""
            unavailable += 1
        latencies.append((time.perf_counter() - started) * 1000)
        truth.append(row.label)
        predicted.append(row.label if _name_key(department) == _name_key(row.label) else department)
    if not truth:
        raise InvalidInput("no rows to evaluate")
    labels = tuple(sorted(set(truth) | (set(predicted) - {""})))
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        if p in index:
            confusion[index[t]][index[p]] += 1
    per_label = {}
    for label, i in index.items():
        tp = confusion[i][i]
        predicted_n = sum(row[i] for row in confusion)
        support = sum(1 for t in truth if t == label)
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = LabelScore(precision, recall, f1, support)
    scored = [s for label, s in per_label.items() if s.support]  # macro-F1 over the labels that occur in the truth
    return EvalReport(
        rows=len(truth),
        accuracy=sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth),
        macro_f1=sum(s.f1 for s in scored) / len(scored),
        labels=labels,
        per_label=per_label,
        confusion=tuple(tuple(row) for row in confusion),
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
        unavailable=unavailable,
    )


def _percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


# --- python -m core.classify.train ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild (``--shipped``) or check (``--check``) the shipped model against the knowledge YAML."""
    parser = argparse.ArgumentParser(prog="python -m core.classify.train", description=main.__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--shipped", action="store_true", help=f"rebuild {SHIPPED_MODEL_PATH.name} from the YAML")
    action.add_argument("--check", action="store_true", help="exit 1 if the shipped model is older than the YAML")
    args = parser.parse_args(argv)
    try:
        knowledge = load_knowledge()
        if args.check:
            model = read_model(SHIPPED_MODEL_PATH)
            if model.knowledge_digest != knowledge_digest(knowledge):
                print(f"{SHIPPED_MODEL_PATH}: out of date; run python -m core.classify.train --shipped")
                return 1
            print(f"{SHIPPED_MODEL_PATH}: up to date ({model.version})")
            return 0
        started = time.perf_counter()
        model = fit_shipped_model(knowledge)
        save_model(model, SHIPPED_MODEL_PATH)
    except TicketbotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = Counter(label for _, label in knowledge_examples(knowledge))
    print(f"wrote {SHIPPED_MODEL_PATH} ({SHIPPED_MODEL_PATH.stat().st_size / 1024:.0f} KiB) version {model.version}")
    print(f"{model.examples} examples in {time.perf_counter() - started:.1f} s: {dict(counts)}")
    for warning in model.estimator.fit_warnings_:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    # Run main from the imported module, not from __main__: pickles must name core.classify.train.BlendedTextModel.
    from core.classify.train import main as _main

    sys.exit(_main())
