"""Unsupervised domain adaptation: a labelled source domain, an unlabelled target domain, one adapted model.

Each method lives in its own module: :mod:`~headstart.adapt.source_only`, :mod:`~headstart.adapt.coral`,
:mod:`~headstart.adapt.mmd`, :mod:`~headstart.adapt.adversarial` (DANN, CDAN),
:mod:`~headstart.adapt.self_training`; :mod:`~headstart.adapt.common` holds what they share, including the
label-free score that chooses between them. :class:`DomainAdapter` runs them (``headstart adapt``).
"""

from headstart.adapt.adapter import METHODS, DomainAdapter
from headstart.adapt.adversarial import GradientReversal, gradient_reversal
from headstart.adapt.common import AdaptedHead, DomainFeatures, information_maximization

__all__ = ["METHODS", "DomainAdapter", "AdaptedHead", "DomainFeatures", "GradientReversal", "gradient_reversal",
           "information_maximization"]
