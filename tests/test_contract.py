"""One checklist over every estimator in the task table (and the domain adapter): scikit-learn's contract.

Constructors only store their arguments; ``get_params`` / ``set_params`` read and write them; ``sklearn.base.clone``
makes an unfitted copy with the same parameters; using an unfitted estimator raises ``NotFittedError``; ``fit``
returns the estimator itself.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from conftest import tiny_params
from sklearn.base import clone

from headstart import DomainAdapter, ImageClassifier, NotFittedError, ParameterError
from headstart.tasks import TASK_TABLE, resolve

ESTIMATORS = [resolve(task.estimator) for task in TASK_TABLE] + [DomainAdapter]


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_scikit_learn_estimator_contract(cls: type, tmp_path: Path) -> None:
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    estimator = cls()
    assert list(estimator.get_params()) == names
    assert estimator.get_params(deep=False) == estimator.get_params(deep=True)

    # the constructor stores what it is given, even nonsense: checks happen in fit (scikit-learn's rule)
    odd = cls(seed=-3)
    assert odd.seed == -3

    returned = estimator.set_params(seed=7)
    assert returned is estimator and estimator.seed == 7 and "seed=7" in repr(estimator)
    with pytest.raises(ParameterError, match="no parameter 'sed'") as info:
        estimator.set_params(sed=1)
    assert "seed" in (info.value.fix or "")

    copy = clone(estimator)
    assert copy is not estimator and type(copy) is cls and copy.get_params() == estimator.get_params()

    with pytest.raises(NotFittedError, match="not fitted"):
        copy.predict(["x.jpg"])
    with pytest.raises(NotFittedError, match="not fitted"):
        copy.save(tmp_path / "model")


def test_fit_returns_the_estimator_itself(sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params(strategy="linear_probe", epochs=1, calibrate=False))
    assert classifier.fit(sample_dir) is classifier
    # a clone of a fitted estimator is unfitted, with the same parameters
    copy = clone(classifier)
    assert copy.get_params() == classifier.get_params() and not hasattr(copy, "model_")
