"""Reproduction of the focal-loss paper's analyses (Lin et al., 2017): the OHEM baseline
(``ohem``), Figure 4's loss distribution (``loss_cdf``) and the Table 1 report (``runs``,
``report``). Not part of the detector: the model core never imports from here."""
